//! Pagination and ordering shared by list queries.

use sqlx::{Postgres, QueryBuilder};

/// `limit`/`offset` of a list request, already bounded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Page {
    pub limit: i64,
    pub offset: i64,
}

impl Page {
    pub const DEFAULT_LIMIT: i64 = 50;
    pub const MAX_LIMIT: i64 = 1000;

    pub fn all() -> Page {
        Page {
            limit: i64::MAX,
            offset: 0,
        }
    }
}

impl Default for Page {
    fn default() -> Page {
        Page {
            limit: Page::DEFAULT_LIMIT,
            offset: 0,
        }
    }
}

/// A field a list may be sorted by: the name clients use and the SQL expression behind it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SortField {
    pub name: &'static str,
    pub expr: &'static str,
}

impl SortField {
    pub const fn new(name: &'static str, expr: &'static str) -> SortField {
        SortField { name, expr }
    }
}

/// The order of a list: one of the table's [`SortField`]s, then `tiebreak` so that pages are
/// stable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sort {
    pub field: SortField,
    pub descending: bool,
}

impl Sort {
    /// Appends ` ORDER BY <field> <dir>, <tiebreak> <dir> LIMIT … OFFSET …`. An index on
    /// `(field DESC, tiebreak DESC)` yields this order read either way.
    pub fn push_order_and_page(
        &self,
        query: &mut QueryBuilder<'_, Postgres>,
        tiebreak: &str,
        page: Page,
    ) {
        let dir = if self.descending { "DESC" } else { "ASC" };
        query
            .push(" ORDER BY ")
            .push(self.field.expr)
            .push(" ")
            .push(dir)
            .push(", ")
            .push(tiebreak)
            .push(" ")
            .push(dir)
            .push(" LIMIT ")
            .push_bind(page.limit)
            .push(" OFFSET ")
            .push_bind(page.offset);
    }
}
