//! Many rows in few statements: a batch's new rows (payment's holds, inventory's
//! reservations) go in multi-row `INSERT`s instead of one statement each.
//!
//! Each statement carries a power of two of rows (13 rows: 8, 4 and 1), so a table has a
//! handful of statement texts, each prepared once per connection, instead of one per batch
//! size.

use sqlx::any::AnyArguments;
use sqlx::query::Query;
use sqlx::{Any, AnyConnection};
use std::sync::Mutex;

use crate::StoreError;

/// The statement that inserts `rows` rows of `columns` columns after `head` (`INSERT INTO t
/// (a, b) VALUES`), made once per (head, columns, rows).
fn text(head: &'static str, columns: usize, rows: usize) -> &'static str {
    type Key = (&'static str, usize, usize);
    static TEXTS: Mutex<Vec<(Key, &'static str)>> = Mutex::new(Vec::new());
    let mut texts = TEXTS
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    if let Some((_, text)) = texts.iter().find(|(key, _)| *key == (head, columns, rows)) {
        return text;
    }
    let values: Vec<String> = (0..rows)
        .map(|r| {
            let marks: Vec<String> = (1..=columns)
                .map(|c| format!("${}", r * columns + c))
                .collect();
            format!("({})", marks.join(", "))
        })
        .collect();
    // Leaked once per (head, columns, power of two): a bounded handful per table.
    let text: &'static str = Box::leak(format!("{head} {}", values.join(", ")).into_boxed_str());
    texts.push(((head, columns, rows), text));
    text
}

/// Inserts `rows` after `head` (`INSERT INTO t (a, b) VALUES`, naming `columns` columns),
/// `bind` binding one row's `columns` values in order. In the caller's transaction; an error
/// (a unique violation) leaves it to the caller to roll back.
pub async fn insert_many<'q, T>(
    conn: &mut AnyConnection,
    head: &'static str,
    columns: usize,
    rows: &'q [T],
    bind: impl Fn(Query<'q, Any, AnyArguments<'q>>, &'q T) -> Query<'q, Any, AnyArguments<'q>>,
) -> Result<(), StoreError> {
    let mut rest = rows;
    while !rest.is_empty() {
        // The largest power of two that fits, at most 128 rows a statement.
        let take = (1usize << rest.len().ilog2()).min(128);
        let (now, later) = rest.split_at(take);
        let mut query = sqlx::query(text(head, columns, take));
        for row in now {
            query = bind(query, row);
        }
        query.execute(&mut *conn).await?;
        rest = later;
    }
    Ok(())
}
