// Qilu's build of FerretDB: narrowing a query through an index before the filter is applied.
//
// FerretDB's SQLite backend narrows only by `_id` equality and applies the whole filter in Go to what SQLite
// returns, so what is narrowed here needs only to hold every match (a superset is correct, just slower). Two
// more narrowings are added: `_id` in a list, and the conditions an "mk_" multikey index covers
// (qilu_multikey.go). The index read is the one with the most fields, all of them narrowed by the filter (a
// tie goes to the one with fewer rows for the filter); other indexes narrowing fields it leaves open are
// asked about each of its rows. Where the index's rows come in `_id` order, the documents are streamed so.

package sqlite

import (
	"context"
	"fmt"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/FerretDB/FerretDB/internal/backends"
	"github.com/FerretDB/FerretDB/internal/backends/sqlite/metadata"
	"github.com/FerretDB/FerretDB/internal/handler/sjson"
	"github.com/FerretDB/FerretDB/internal/types"
	"github.com/FerretDB/FerretDB/internal/util/fsql"
	"github.com/FerretDB/FerretDB/internal/util/must"
)

// keyCondition is one condition on a field that an index can serve: values to be equal to (any of them), or a
// range per alternative.
type keyCondition struct {
	equal  []any    // as the side table holds them
	ids    []any    // for `_id`: the values as given
	ranges [][2]any // [low, high) each; a nil bound is open
}

// qiluQuery is the SQL of a find (or count, update, delete) that nothing else narrows: selectClause narrowed
// through a list of `_id`s or an mk_ index when the filter allows, in the order asked (sort is empty, by
// `_id`, or `$natural`). narrowed tells whether anything narrows it.
//
// When the index read fixes each of its fields to one value, its rows come in `id` order, so the documents
// are joined to them as they come: SQLite streams the matches in `_id` order and stops when FerretDB has
// what it asked for (a page of twenty, or a count up to a hundred, reads about that many, not every match).
// Otherwise the ids are gathered first and the documents read by them.
func qiluQuery(ctx context.Context, db *fsql.DB, meta *metadata.Collection, filter, sort *types.Document,
	selectClause string,
) (q string, args []any, narrowed bool) {
	plain := selectClause + prepareOrderByClause(sort)

	defer func() {
		if recover() != nil {
			q, args, narrowed = plain, nil, false // not narrowing is always correct
		}
	}()

	if filter == nil || filter.Len() == 0 || meta.Capped() {
		return plain, nil, false
	}

	conditions := map[string][]keyCondition{}
	collectConditions(filter, conditions, 0)

	if ids, ok := idList(conditions["_id"]); ok {
		args := make([]any, len(ids))
		for i, id := range ids {
			args[i] = string(must.NotFail(sjson.MarshalSingleValue(id)))
		}

		return selectClause + " WHERE " + inList(metadata.IDColumn, args) + prepareOrderByClause(sort), args, true
	}

	best, used := chooseIndex(ctx, db, meta, conditions)
	if best == nil {
		return plain, nil, false
	}

	read := readOf(meta, best, used, conditions)
	probes, probeArgs := qiluProbes(meta, best, used, conditions)
	from := fmt.Sprintf("FROM %q", meta.TableName)
	descending, byID := idOrder(sort)

	if len(read.terms) == 1 && read.ordered && byID && strings.HasSuffix(selectClause, from) {
		order := " GROUP BY a.id ORDER BY a.id" // a document listing a value twice has two rows
		if descending {
			order += " DESC"
		}

		return strings.TrimSuffix(selectClause, from) + fmt.Sprintf("FROM %s AS a CROSS JOIN %q ON %q.%s = a.id WHERE ",
			read.side, meta.TableName, meta.TableName, metadata.IDColumn) +
			strings.Join(append(read.terms[0], probes...), " AND ") + order, append(read.args[0], probeArgs...), true
	}

	selects := make([]string, len(read.terms))
	for j, terms := range read.terms {
		selects[j] = "SELECT a.id FROM " + read.side + " AS a WHERE " + strings.Join(append(terms, probes...), " AND ")
		args = append(append(args, read.args[j]...), probeArgs...)
	}

	// INDEXED BY: without statistics SQLite may prefer reading the table to probing its `_id` index.
	return selectClause + fmt.Sprintf(` INDEXED BY %q WHERE %s IN (%s)`, meta.TableName+"_"+backends.DefaultIndexName,
		metadata.IDColumn, strings.Join(selects, " UNION ALL ")) + prepareOrderByClause(sort), args, true
}

// idOrder reads a sort that the index rows' `id` order can give: none, or by `_id` alone.
func idOrder(sort *types.Document) (descending, ok bool) {
	if sort == nil || sort.Len() == 0 {
		return false, true
	}

	direction, err := sort.Get("_id")
	if err != nil || sort.Len() != 1 {
		return false, false
	}

	return descendingOf(direction)
}

// descendingOf reads a sort direction: whether it is descending, and whether it is a number at all.
func descendingOf(direction any) (descending, ok bool) {
	switch d := direction.(type) {
	case int64:
		return d < 0, true
	case int32:
		return d < 0, true
	case float64:
		return d < 0, true
	}

	return false, false
}

// indexRead is the conditions on one mk_ index's side table (`a`) that narrow it: one list of terms per
// alternative of a range on its last used field (each one search of its (key..., id) index), and whether
// every used field is fixed to a single value, so that its rows come in `id` order.
type indexRead struct {
	side    string
	terms   [][]string
	args    [][]any
	ordered bool
}

func readOf(meta *metadata.Collection, index *metadata.IndexInfo, used int, conditions map[string][]keyCondition,
) indexRead {
	read := indexRead{side: fmt.Sprintf("%q", metadata.MultikeyTable(meta.TableName, index.Name)), ordered: true}

	// Every field before the last is an equality; the last is an equality or a range per alternative.
	var equalities []string
	var equalArgs []any
	var alternatives [][2]any

	for i := 0; i < used; i++ {
		column := "a." + metadata.MultikeyColumn(i)
		found := conditions[index.Key[i].Field]

		if equality, ok := firstWith(found, true); ok {
			equalities = append(equalities, inList(column, equality.equal))
			equalArgs = append(equalArgs, equality.equal...)
			read.ordered = read.ordered && len(equality.equal) == 1

			continue
		}

		ranged, _ := firstWith(found, false)
		alternatives = ranged.ranges
		read.ordered = false
	}

	if alternatives == nil {
		alternatives = [][2]any{{nil, nil}}
	}

	last := "a." + metadata.MultikeyColumn(used-1)

	for _, r := range alternatives {
		bounds, boundArgs := rangeTerms(last, r)
		read.terms = append(read.terms, append(append([]string(nil), equalities...), bounds...))
		read.args = append(read.args, append(append([]any(nil), equalArgs...), boundArgs...))
	}

	return read
}

// raceRows bounds how many rows of each candidate index chooseIndex counts.
const raceRows = 1000

// chooseIndex is the mk_ index to read and how many fields it has: the one with the most fields, all of them
// narrowed by the filter; among those that narrow as many, the one with the fewest rows for the filter,
// counted up to raceRows in each (a race, as MongoDB's planner races its candidate plans, since SQLite keeps
// no statistics here), the first created when they tie. A search by surname and given name thus reads the
// few patients of that given name, not everyone of the surname.
func chooseIndex(ctx context.Context, db *fsql.DB, meta *metadata.Collection, conditions map[string][]keyCondition,
) (*metadata.IndexInfo, int) {
	var tied []*metadata.IndexInfo
	var bestUsed int

	for i := range meta.Settings.Indexes {
		index := &meta.Settings.Indexes[i]
		if !metadata.IsMultikey(*index) {
			continue
		}

		switch used := usableFields(index, conditions); {
		case used > bestUsed:
			tied, bestUsed = []*metadata.IndexInfo{index}, used
		case used == bestUsed && used > 0:
			tied = append(tied, index)
		}
	}

	if len(tied) == 0 {
		return nil, 0
	}

	if len(tied) == 1 {
		return tied[0], bestUsed
	}

	best, fewest := tied[0], int64(raceRows+1)

	for _, index := range tied {
		read := readOf(meta, index, bestUsed, conditions)
		selects := make([]string, len(read.terms))
		var args []any

		for j, terms := range read.terms {
			selects[j] = "SELECT 1 FROM " + read.side + " AS a WHERE " + strings.Join(terms, " AND ")
			args = append(args, read.args[j]...)
		}

		var rows int64
		q := "SELECT count(*) FROM (" + strings.Join(selects, " UNION ALL ") + " LIMIT ?)"

		if err := db.QueryRowContext(ctx, q, append(args, raceRows)...).Scan(&rows); err != nil {
			continue // the index keeps its place behind those counted
		}

		if rows < fewest {
			best, fewest = index, rows
		}
	}

	return best, bestUsed
}

// inList is `column IN (?, ...)` with a mark per value.
func inList(column string, values []any) string {
	return fmt.Sprintf("%s IN (%s)", column, strings.TrimSuffix(strings.Repeat("?, ", len(values)), ", "))
}

// rangeTerms are the bounds of one range [low, high) on a column; a nil bound is open.
func rangeTerms(column string, r [2]any) (terms []string, args []any) {
	if r[0] != nil {
		terms, args = append(terms, column+" >= ?"), append(args, r[0])
	}

	if r[1] != nil {
		terms, args = append(terms, column+" < ?"), append(args, r[1])
	}

	return terms, args
}

// maxProbes bounds how many other indexes a narrowing asks besides the one it reads.
const maxProbes = 3

// qiluProbes are the conditions that each other index narrowing a field the chosen one leaves open puts on
// the chosen one's rows (`a`): EXISTS in its side table, one search per row of its (key..., id) index when
// it fixes each field, or of its (id) index when it ranges over one (a range leaves the (key..., id) index
// to read the whole range for each row: every patient of the surname for each of the given name). The
// narrowing is then the intersection, so FerretDB reads and filters in Go only the documents that every
// indexed condition may match (a search by surname and given name reads the few with both, not everyone of
// that surname).
func qiluProbes(meta *metadata.Collection, best *metadata.IndexInfo, bestUsed int,
	conditions map[string][]keyCondition,
) (probes []string, args []any) {
	covered := map[string]bool{}
	for i := 0; i < bestUsed; i++ {
		covered[best.Key[i].Field] = true
	}

	for i := range meta.Settings.Indexes {
		index := &meta.Settings.Indexes[i]
		if index == best || !metadata.IsMultikey(*index) || len(probes) == maxProbes {
			continue
		}

		used := usableFields(index, conditions)
		adds := false

		for j := 0; j < used; j++ {
			adds = adds || !covered[index.Key[j].Field]
		}

		if !adds {
			continue
		}

		terms := make([]string, 0, used+1)
		side := fmt.Sprintf("%q AS p", metadata.MultikeyTable(meta.TableName, index.Name))

		for j := 0; j < used; j++ {
			column := "p." + metadata.MultikeyColumn(j)
			found := conditions[index.Key[j].Field]
			covered[index.Key[j].Field] = true

			if equality, ok := firstWith(found, true); ok {
				terms = append(terms, inList(column, equality.equal))
				args = append(args, equality.equal...)

				continue
			}

			ranged, _ := firstWith(found, false)
			spans := make([]string, 0, len(ranged.ranges))
			side = fmt.Sprintf("%q AS p INDEXED BY %q", metadata.MultikeyTable(meta.TableName, index.Name),
				metadata.MultikeyTable(meta.TableName, index.Name)+"_id")

			for _, r := range ranged.ranges {
				bounds, boundArgs := rangeTerms(column, r)
				spans = append(spans, "("+strings.Join(append([]string{"1"}, bounds...), " AND ")+")")
				args = append(args, boundArgs...)
			}

			terms = append(terms, "("+strings.Join(spans, " OR ")+")")
		}

		terms = append(terms, "p.id = a.id")
		probes = append(probes, fmt.Sprintf("EXISTS (SELECT 1 FROM %s WHERE %s)", side, strings.Join(terms, " AND ")))
	}

	return probes, args
}

// usableFields is how many fields of the index the conditions narrow when they narrow every one of them (each
// by an equality, except that the last may be narrowed by a range), or 0. Only all of them will do: a side
// table has no row for a document missing one of its fields (MongoDB would index it under null), so reading
// (reach, family) by reach alone would lose every patient without a surname.
func usableFields(index *metadata.IndexInfo, conditions map[string][]keyCondition) int {
	used := 0

	for _, key := range index.Key {
		found := conditions[key.Field]
		if _, ok := firstWith(found, true); ok {
			used++
			continue
		}

		if _, ok := firstWith(found, false); ok {
			used++
		}

		break
	}

	if used < len(index.Key) {
		return 0
	}

	return used
}

// firstWith is the first condition that is an equality (or, with equal false, a range).
func firstWith(found []keyCondition, equal bool) (keyCondition, bool) {
	for _, c := range found {
		if (c.equal != nil) == equal {
			return c, true
		}
	}

	return keyCondition{}, false
}

// idList is the `_id` values given by an equality or an `$in`, when `_id` is named in no other way.
func idList(found []keyCondition) ([]any, bool) {
	if len(found) != 1 || found[0].ids == nil {
		return nil, false
	}

	return found[0].ids, true
}

// collectConditions gathers, from the filter and the branches of its `$and` (and of an `$or` of one branch),
// every condition on a field that an index can serve. Anything else is left to the filter.
func collectConditions(filter *types.Document, into map[string][]keyCondition, depth int) {
	if depth > 8 {
		return
	}

	for _, key := range filter.Keys() {
		value := must.NotFail(filter.Get(key))

		switch key {
		case "$and", "$or":
			branches, ok := value.(*types.Array)
			if !ok || (key == "$or" && branches.Len() != 1) {
				continue
			}

			for i := 0; i < branches.Len(); i++ {
				if branch, ok := must.NotFail(branches.Get(i)).(*types.Document); ok {
					collectConditions(branch, into, depth+1)
				}
			}

			continue
		}

		if strings.HasPrefix(key, "$") {
			continue
		}

		if condition, ok := conditionOf(key, value); ok {
			into[key] = append(into[key], condition)
		}
	}
}

// conditionOf reads one field's condition; false when an index cannot serve it.
func conditionOf(field string, value any) (keyCondition, bool) {
	if v, ok := keyValue(value); ok {
		c := keyCondition{equal: []any{v}}
		if field == "_id" {
			c.ids = []any{value}
		}

		return c, true
	}

	switch value := value.(type) {
	case types.Regex:
		return prefixCondition(value.Pattern, value.Options)
	case *types.Document:
		return operatorCondition(field, value)
	}

	return keyCondition{}, false
}

func operatorCondition(field string, operators *types.Document) (keyCondition, bool) {
	keys := operators.Keys()
	if len(keys) == 0 || !strings.HasPrefix(keys[0], "$") {
		return keyCondition{}, false // a whole document to be equal to
	}

	if len(keys) == 1 && keys[0] == "$in" {
		list, ok := must.NotFail(operators.Get("$in")).(*types.Array)
		if !ok || list.Len() == 0 || list.Len() > 500 {
			return keyCondition{}, false
		}

		c := keyCondition{}
		for i := 0; i < list.Len(); i++ {
			item := must.NotFail(list.Get(i))
			v, ok := keyValue(item)
			if !ok {
				return keyCondition{}, false
			}
			c.equal = append(c.equal, v)
			if field == "_id" {
				c.ids = append(c.ids, item)
			}
		}

		return c, true
	}

	if len(keys) == 1 && keys[0] == "$eq" {
		return conditionOf(field, must.NotFail(operators.Get("$eq")))
	}

	if operators.Has("$regex") {
		pattern, ok := must.NotFail(operators.Get("$regex")).(string)
		if !ok {
			return keyCondition{}, false
		}

		options := ""
		if operators.Has("$options") {
			if options, ok = must.NotFail(operators.Get("$options")).(string); !ok {
				return keyCondition{}, false
			}
		}
		if len(keys) > 2 || (len(keys) == 2 && !operators.Has("$options")) {
			return keyCondition{}, false
		}

		return prefixCondition(pattern, options)
	}

	// A range of strings: the only ranges whose order SQLite and MongoDB agree on without more care.
	var low, high any
	for _, op := range keys {
		v, ok := must.NotFail(operators.Get(op)).(string)
		if !ok {
			return keyCondition{}, false
		}
		switch op {
		case "$gte", "$gt":
			low = v // $gt widened to $gte: the filter drops the one value
		case "$lt":
			high = v
		case "$lte":
			high = v + "\x00" // the least string after v
		default:
			return keyCondition{}, false
		}
	}

	return keyCondition{ranges: [][2]any{{low, high}}}, true
}

// keyValue is a plain value as the side table holds it (json_each's value of the stored JSON).
func keyValue(value any) (any, bool) {
	switch v := value.(type) {
	case string:
		return v, true
	case int32:
		return int64(v), true
	case int64:
		return v, true
	case float64:
		return v, true
	case bool:
		if v {
			return int64(1), true
		}
		return int64(0), true
	case time.Time:
		return v.UnixMilli(), true
	case types.ObjectID:
		return string(must.NotFail(sjson.MarshalSingleValue(v)))[1:25], true
	}

	return nil, false
}

// prefixCondition reads `^literal` or `^(?:one|other)` (with backslash escapes) as ranges of strings; any
// other pattern cannot be narrowed.
func prefixCondition(pattern, options string) (keyCondition, bool) {
	if options != "" || !strings.HasPrefix(pattern, "^") {
		return keyCondition{}, false
	}

	body := pattern[1:]
	if strings.HasPrefix(body, "(?:") && strings.HasSuffix(body, ")") {
		body = body[3 : len(body)-1]
	}

	var alternatives []string
	var current strings.Builder

	for i := 0; i < len(body); i++ {
		ch := body[i]
		switch {
		case ch == '\\' && i+1 < len(body):
			next := body[i+1]
			if (next >= 'a' && next <= 'z') || (next >= 'A' && next <= 'Z') || (next >= '0' && next <= '9') {
				return keyCondition{}, false // \d, \w, ...: a class, not a letter
			}
			current.WriteByte(next)
			i++
		case ch == '|':
			alternatives = append(alternatives, current.String())
			current.Reset()
		case strings.IndexByte(".^$?*+()[]{}\\", ch) >= 0:
			return keyCondition{}, false
		default:
			current.WriteByte(ch)
		}
	}

	alternatives = append(alternatives, current.String())
	c := keyCondition{}

	for _, prefix := range alternatives {
		if prefix == "" || !utf8.ValidString(prefix) {
			return keyCondition{}, false
		}
		c.ranges = append(c.ranges, [2]any{prefix, successor(prefix)})
	}

	return c, true
}

// successor is the least string after every string that starts with prefix (nil when there is none).
func successor(prefix string) any {
	runes := []rune(prefix)
	for i := len(runes) - 1; i >= 0; i-- {
		switch next := runes[i] + 1; {
		case next == 0xD800:
			runes[i] = 0xE000
		case next > utf8.MaxRune:
			continue
		default:
			runes[i] = next
		}

		return string(runes[:i+1])
	}

	return nil
}

// qiluOrderByID is the ORDER BY of a find sorted by `_id` alone, through the `_id` index. SQLite orders the
// JSON text of `_id`, which is the order MongoDB gives when every `_id` of the collection is a string (every
// collection of Qilu's) or every one an ObjectId; numbers would be ordered as text.
func qiluOrderByID(direction any) string {
	if descending, _ := descendingOf(direction); descending {
		return fmt.Sprintf(" ORDER BY %s DESC", metadata.IDColumn)
	}

	return fmt.Sprintf(" ORDER BY %s", metadata.IDColumn)
}
