//! Pagination shared by list queries.

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
