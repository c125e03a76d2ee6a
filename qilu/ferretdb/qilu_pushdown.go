// Qilu's build of FerretDB: narrowing a query through an index before the filter is applied.
//
// FerretDB's SQLite backend narrows only by `_id` equality and applies the whole filter in Go to what SQLite
// returns, so what is narrowed here needs only to hold every match (a superset is correct, just slower). Two
// more narrowings are added: `_id` in a list, and the conditions an "mk_" multikey index covers
// (qilu_multikey.go). The index read is chosen by how many of its leading fields the filter fixes (a tie goes
// to the index created first); other indexes narrowing fields it leaves open are asked about each of its rows.

package sqlite

import (
	"fmt"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/FerretDB/FerretDB/internal/backends"
	"github.com/FerretDB/FerretDB/internal/backends/sqlite/metadata"
	"github.com/FerretDB/FerretDB/internal/handler/sjson"
	"github.com/FerretDB/FerretDB/internal/types"
	"github.com/FerretDB/FerretDB/internal/util/must"
)

// keyCondition is one condition on a field that an index can serve: values to be equal to (any of them), or a
// range per alternative.
type keyCondition struct {
	equal  []any    // as the side table holds them
	ids    []any    // for `_id`: the values as given
	ranges [][2]any // [low, high) each; a nil bound is open
}

// qiluWhere is the WHERE clause narrowing the filter's matches, or "" when nothing can narrow them.
func qiluWhere(meta *metadata.Collection, filter *types.Document) (clause string, args []any) {
	defer func() {
		if recover() != nil {
			clause, args = "", nil // not narrowing is always correct
		}
	}()

	if filter == nil || filter.Len() == 0 {
		return "", nil
	}

	conditions := map[string][]keyCondition{}
	collectConditions(filter, conditions, 0)

	if ids, ok := idList(conditions["_id"]); ok {
		marks := make([]string, len(ids))
		args := make([]any, len(ids))

		for i, id := range ids {
			marks[i] = "?"
			args[i] = string(must.NotFail(sjson.MarshalSingleValue(id)))
		}

		return fmt.Sprintf(` WHERE %s IN (%s)`, metadata.IDColumn, strings.Join(marks, ", ")), args
	}

	var best *metadata.IndexInfo
	var bestUsed int

	for i := range meta.Settings.Indexes {
		index := &meta.Settings.Indexes[i]
		if !metadata.IsMultikey(*index) {
			continue
		}

		if used := usableFields(index, conditions); used > bestUsed {
			best, bestUsed = index, used
		}
	}

	if best == nil {
		return "", nil
	}

	// Every field before the last is an equality; the last is an equality or a range per alternative, each
	// alternative its own SELECT so that each is one search of the side table's index.
	var equalities []string
	var equalArgs []any
	var alternatives [][2]any

	for i := 0; i < bestUsed; i++ {
		column := metadata.MultikeyColumn(i)
		found := conditions[best.Key[i].Field]

		if equality, ok := firstWith(found, true); ok {
			equalities = append(equalities, inList(column, equality.equal))
			equalArgs = append(equalArgs, equality.equal...)

			continue
		}

		ranged, _ := firstWith(found, false)
		alternatives = ranged.ranges
	}

	probes, probeArgs := qiluProbes(meta, best, bestUsed, conditions)
	side := fmt.Sprintf("%q", metadata.MultikeyTable(meta.TableName, best.Name))
	last := metadata.MultikeyColumn(bestUsed - 1)

	if alternatives == nil {
		alternatives = [][2]any{{nil, nil}}
	}

	selects := make([]string, len(alternatives))

	for j, r := range alternatives {
		bounds, boundArgs := rangeTerms(last, r)
		terms := append(append([]string(nil), equalities...), bounds...)
		args = append(append(args, equalArgs...), boundArgs...)
		terms = append(terms, probes...)
		args = append(args, probeArgs...)
		selects[j] = "SELECT a.id FROM " + side + " AS a WHERE " + strings.Join(terms, " AND ")
	}

	// INDEXED BY: without statistics SQLite may prefer reading the table to probing its `_id` index.
	return fmt.Sprintf(` INDEXED BY %q WHERE %s IN (%s)`, meta.TableName+"_"+backends.DefaultIndexName, metadata.IDColumn,
		strings.Join(selects, " UNION ALL ")), args
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
// the chosen one's rows (`a`): EXISTS in its side table, one search of its (key..., id) index per row. The
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

			for _, r := range ranged.ranges {
				bounds, boundArgs := rangeTerms(column, r)
				spans = append(spans, "("+strings.Join(append([]string{"1"}, bounds...), " AND ")+")")
				args = append(args, boundArgs...)
			}

			terms = append(terms, "("+strings.Join(spans, " OR ")+")")
		}

		terms = append(terms, "p.id = a.id")
		probes = append(probes, fmt.Sprintf("EXISTS (SELECT 1 FROM %q AS p WHERE %s)",
			metadata.MultikeyTable(meta.TableName, index.Name), strings.Join(terms, " AND ")))
	}

	return probes, args
}

// usableFields counts the index's leading fields the conditions narrow: each by an equality, except that the
// last one may be narrowed by a range.
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
	descending := false

	switch d := direction.(type) {
	case int64:
		descending = d < 0
	case int32:
		descending = d < 0
	case float64:
		descending = d < 0
	}

	if descending {
		return fmt.Sprintf(" ORDER BY %s DESC", metadata.IDColumn)
	}

	return fmt.Sprintf(" ORDER BY %s", metadata.IDColumn)
}
