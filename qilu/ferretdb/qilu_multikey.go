// Qilu's build of FerretDB: multikey indexes for the SQLite backend.
//
// SQLite indexes an expression, one value per row, so FerretDB's index on a field that holds a list (every
// search field of a FHIR resource does) can never be searched. An index whose name starts with "mk_" is kept
// instead in a side table of (value of each key field..., _id), one row per combination of the list's values,
// filled by triggers on the collection's table, so every write keeps it exact in the same statement. A find,
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
// of the table (`row` is the table's quoted name).
func multikeyRows(index IndexInfo, row string, fromTable bool) string {
	columns := make([]string, 0, len(index.Key)+1)
	sources := make([]string, 0, len(index.Key)+1)

	if fromTable {
		sources = append(sources, row)
	}

	for i, key := range index.Key {
		columns = append(columns, fmt.Sprintf("j%d.value", i))
		sources = append(sources, fmt.Sprintf("json_each(%s.%s, %s) AS j%d", row, DefaultColumn, jsonPath(key.Field), i))
	}

	columns = append(columns, fmt.Sprintf("%s.%s", row, IDColumn))

	return "SELECT " + strings.Join(columns, ", ") + " FROM " + strings.Join(sources, ", ")
}

// multikeyCreate makes the side table, its two indexes and the triggers, and fills it from the documents there.
func multikeyCreate(ctx context.Context, db *fsql.DB, tableName string, index IndexInfo) error {
	side := MultikeyTable(tableName, index.Name)
	columns := make([]string, len(index.Key))

	for i := range index.Key {
		columns[i] = MultikeyColumn(i)
	}

	insertInto := fmt.Sprintf("INSERT INTO %q (%s, id) ", side, strings.Join(columns, ", "))
	deleteOld := fmt.Sprintf("DELETE FROM %q WHERE id = OLD.%s;", side, IDColumn)

	statements := []string{
		fmt.Sprintf("CREATE TABLE %q (%s, id NOT NULL)", side, strings.Join(columns, ", ")),
		fmt.Sprintf("CREATE INDEX %q ON %q (%s, id)", side+"_key", side, strings.Join(columns, ", ")),
		fmt.Sprintf("CREATE INDEX %q ON %q (id)", side+"_id", side),
		fmt.Sprintf("CREATE TRIGGER %q AFTER INSERT ON %q BEGIN %s%s; END",
			side+"_insert", tableName, insertInto, multikeyRows(index, "NEW", false)),
		fmt.Sprintf("CREATE TRIGGER %q AFTER DELETE ON %q BEGIN %s END", side+"_delete", tableName, deleteOld),
		fmt.Sprintf("CREATE TRIGGER %q AFTER UPDATE ON %q BEGIN %s %s%s; END",
			side+"_update", tableName, deleteOld, insertInto, multikeyRows(index, "NEW", false)),
		insertInto + multikeyRows(index, fmt.Sprintf("%q", tableName), true),
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

// multikeyDrop removes the side table; its triggers go with it only when the collection's table goes, so they
// are dropped by name.
func multikeyDrop(ctx context.Context, db *fsql.DB, tableName string, index IndexInfo) error {
	side := MultikeyTable(tableName, index.Name)
	for _, q := range []string{
		fmt.Sprintf("DROP TRIGGER IF EXISTS %q", side+"_insert"),
		fmt.Sprintf("DROP TRIGGER IF EXISTS %q", side+"_delete"),
		fmt.Sprintf("DROP TRIGGER IF EXISTS %q", side+"_update"),
		fmt.Sprintf("DROP TABLE IF EXISTS %q", side),
	} {
		if _, err := db.ExecContext(ctx, q); err != nil {
			return lazyerrors.Error(err)
		}
	}

	return nil
}
