// Qilu's build of FerretDB: multikey indexes for the SQLite backend.
//
// SQLite indexes an expression, one value per row, so FerretDB's index on a field that holds a list (every
// search field of a FHIR resource does) can never be searched. An index whose name starts with "mk_" is kept
// instead in a side table of (value of each key field..., _id), one row per combination of the list's values,
// filled by triggers on the collection's table (one for all its indexes), so every write keeps it exact in the
// same statement. A find,
// count, update or delete whose filter gives the index's fields is narrowed through it (qilu_pushdown.go).
//
// The contract: a key field's path crosses no list of documents on its way (a list of plain values at its end
// is what the index is for). Qilu's own indexes keep it; FerretDB cannot check it.

package metadata

import (
	"context"
	"fmt"
	"strings"

	"github.com/FerretDB/FerretDB/internal/util/fsql"
	"github.com/FerretDB/FerretDB/internal/util/lazyerrors"
)

// MultikeyPrefix marks the indexes kept in a side table.
const MultikeyPrefix = "mk_"

// IsMultikey tells whether the index is kept in a side table.
func IsMultikey(index IndexInfo) bool {
	return strings.HasPrefix(index.Name, MultikeyPrefix) && !index.Unique
}

// MultikeyTable is the side table of one index.
func MultikeyTable(tableName, indexName string) string {
	return tableName + "_" + indexName + "_keys"
}

// MultikeyColumn is the side table's column for the index's i-th key field.
func MultikeyColumn(i int) string {
	return fmt.Sprintf("k%d", i)
}

// jsonPath writes a dotted field as an SQLite JSON path with every step quoted.
func jsonPath(field string) string {
	steps := strings.Split(field, ".")
	for i, step := range steps {
		steps[i] = `"` + strings.ReplaceAll(step, `"`, `\"`) + `"`
	}

	return "'$." + strings.ReplaceAll(strings.Join(steps, "."), "'", "''") + "'"
}

// multikeyRows is the SELECT of index rows: of one document in a trigger (`row` is NEW), or of every document
// of the table (`row` is the table's quoted name). In a trigger each key field is taken with `->`, whose JSON
// cache lets every statement of the trigger share one parse of the document; json_each then reads only the
// field's small list.
func multikeyRows(index IndexInfo, row string, fromTable bool) string {
	columns := make([]string, 0, len(index.Key)+1)
	sources := make([]string, 0, len(index.Key)+1)

	if fromTable {
		sources = append(sources, row)
	}

	for i, key := range index.Key {
		columns = append(columns, fmt.Sprintf("j%d.value", i))

		if fromTable {
			sources = append(sources, fmt.Sprintf("json_each(%s.%s, %s) AS j%d", row, DefaultColumn, jsonPath(key.Field), i))
		} else {
			sources = append(sources, fmt.Sprintf("json_each(%s.%s -> %s) AS j%d", row, DefaultColumn, jsonPath(key.Field), i))
		}
	}

	columns = append(columns, fmt.Sprintf("%s.%s", row, IDColumn))

	return "SELECT " + strings.Join(columns, ", ") + " FROM " + strings.Join(sources, ", ")
}

// multikeyInsertInto is the INSERT that a SELECT of multikeyRows follows.
func multikeyInsertInto(side string, index IndexInfo) string {
	columns := make([]string, len(index.Key))

	for i := range index.Key {
		columns[i] = MultikeyColumn(i)
	}

	return fmt.Sprintf("INSERT INTO %q (%s, id) ", side, strings.Join(columns, ", "))
}

// multikeyTriggers are the statements that give the table one trigger on insert and one on update filling the
// side tables of all its mk_ indexes (and drop the one-per-index triggers of Qilu's earlier builds): one
// trigger program for all indexes, so SQLite parses a written document once, not once per index.
func multikeyTriggers(tableName string, indexes []IndexInfo) []string {
	statements := []string{
		fmt.Sprintf("DROP TRIGGER IF EXISTS %q", tableName+"_qilu_mk_insert"),
		fmt.Sprintf("DROP TRIGGER IF EXISTS %q", tableName+"_qilu_mk_update"),
	}

	var fills, deletes []string

	for _, index := range indexes {
		if !IsMultikey(index) {
			continue
		}

		side := MultikeyTable(tableName, index.Name)
		fills = append(fills, multikeyInsertInto(side, index)+multikeyRows(index, "NEW", false)+";")
		deletes = append(deletes, fmt.Sprintf("DELETE FROM %q WHERE id = OLD.%s;", side, IDColumn))
		statements = append(statements,
			fmt.Sprintf("DROP TRIGGER IF EXISTS %q", side+"_insert"),
			fmt.Sprintf("DROP TRIGGER IF EXISTS %q", side+"_update"))
	}

	if len(fills) == 0 {
		return statements
	}

	return append(statements,
		fmt.Sprintf("CREATE TRIGGER %q AFTER INSERT ON %q BEGIN %s END",
			tableName+"_qilu_mk_insert", tableName, strings.Join(fills, " ")),
		fmt.Sprintf("CREATE TRIGGER %q AFTER UPDATE ON %q BEGIN %s %s END",
			tableName+"_qilu_mk_update", tableName, strings.Join(deletes, " "), strings.Join(fills, " ")))
}

// without is the indexes but the one named.
func without(indexes []IndexInfo, name string) []IndexInfo {
	kept := make([]IndexInfo, 0, len(indexes))

	for _, index := range indexes {
		if index.Name != name {
			kept = append(kept, index)
		}
	}

	return kept
}

// multikeyCreate makes the side table, its two indexes and its delete trigger, fills it from the documents
// there and gives the table its triggers again for `existing` (the collection's indexes) and this one, all in
// one transaction, so no write falls between the filling and the triggers.
func multikeyCreate(ctx context.Context, db *fsql.DB, tableName string, index IndexInfo, existing []IndexInfo) error {
	side := MultikeyTable(tableName, index.Name)
	columns := make([]string, len(index.Key))

	for i := range index.Key {
		columns[i] = MultikeyColumn(i)
	}

	statements := []string{
		fmt.Sprintf("CREATE TABLE %q (%s, id NOT NULL)", side, strings.Join(columns, ", ")),
		fmt.Sprintf("CREATE INDEX %q ON %q (%s, id)", side+"_key", side, strings.Join(columns, ", ")),
		fmt.Sprintf("CREATE INDEX %q ON %q (id)", side+"_id", side),
		fmt.Sprintf("CREATE TRIGGER %q AFTER DELETE ON %q BEGIN DELETE FROM %q WHERE id = OLD.%s; END",
			side+"_delete", tableName, side, IDColumn),
		multikeyInsertInto(side, index) + multikeyRows(index, fmt.Sprintf("%q", tableName), true),
	}
	statements = append(statements, multikeyTriggers(tableName, append(without(existing, index.Name), index))...)

	return db.InTransaction(ctx, func(tx *fsql.Tx) error {
		for _, q := range statements {
			if _, err := tx.ExecContext(ctx, q); err != nil {
				return lazyerrors.Error(err)
			}
		}

		return nil
	})
}

// multikeyDrop removes the side table and its delete trigger, and gives the table its triggers again for the
// indexes that stay (`all` is the collection's indexes; nil when the table itself goes). Triggers go with a
// table only when that table goes, so they are dropped by name.
func multikeyDrop(ctx context.Context, db *fsql.DB, tableName string, index IndexInfo, all []IndexInfo) error {
	side := MultikeyTable(tableName, index.Name)
	statements := []string{
		fmt.Sprintf("DROP TRIGGER IF EXISTS %q", side+"_insert"),
		fmt.Sprintf("DROP TRIGGER IF EXISTS %q", side+"_delete"),
		fmt.Sprintf("DROP TRIGGER IF EXISTS %q", side+"_update"),
		fmt.Sprintf("DROP TABLE IF EXISTS %q", side),
	}

	if all != nil {
		statements = append(statements, multikeyTriggers(tableName, without(all, index.Name))...)
	}

	return db.InTransaction(ctx, func(tx *fsql.Tx) error {
		for _, q := range statements {
			if _, err := tx.ExecContext(ctx, q); err != nil {
				return lazyerrors.Error(err)
			}
		}

		return nil
	})
}
