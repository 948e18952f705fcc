//! Full-text search over product names and descriptions (PostgreSQL `tsvector`, ranked).

use crate::app::AppState;
use crate::db::ReadFrom;
use crate::error::{ApiError, ErrorBody};
use crate::extract::{Json, Query, WriteLsnHeader};
use crate::routes::Routes;
use crate::routes::products::{PRODUCT_COLUMNS, Product, ProductPage};
use crate::validate::{self, Page};
use axum::extract::State;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

/// Routes of this module.
pub fn router() -> Routes {
    Routes::new().get("/api/search", search)
}

/// Query parameters of a search.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct SearchParams {
    /// Search words; quotes, `or` and `-word` work as in web search engines (1-200
    /// characters: `limits.max_query_chars`; no control characters).
    #[param(schema_with = crate::validate::text_200, required = true)]
    pub q: String,
    /// 1-based page number (default 1); page × limit at most 10,000 (`limits.max_result_window`).
    #[param(minimum = 1, maximum = 10_000)]
    pub page: Option<u32>,
    /// Page size (default 20, at most 100: `limits.max_page_size`).
    #[param(minimum = 1, maximum = 100)]
    pub limit: Option<u32>,
}

/// Search results, best match first.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct SearchResults {
    /// The query as understood (trimmed).
    pub query: String,
    /// Matching products, best first.
    pub products: Vec<Product>,
    /// 1-based page number.
    pub page: u32,
    /// Page size.
    pub limit: u32,
    /// Whether another page follows.
    pub has_more: bool,
}

/// Search active products by name and description.
#[utoipa::path(get, path = "/api/search", tag = "catalogue", params(SearchParams, WriteLsnHeader),
    responses((status = 200, body = SearchResults), (status = 400, body = ErrorBody)))]
pub async fn search(
    State(state): State<AppState>,
    from: ReadFrom,
    Query(params): Query<SearchParams>,
) -> Result<Json<SearchResults>, ApiError> {
    let limits = &state.config.limits;
    let q = validate::text("q", &params.q, limits.max_query_chars)?;
    let page = Page::within(params.page, params.limit, limits)?;
    // websearch_to_tsquery never fails on user input (unbalanced quotes, stray operators), so any
    // text is safe to pass; it is a bound parameter in any case.
    let sql = format!(
        "SELECT {PRODUCT_COLUMNS} FROM products p LEFT JOIN inventory i ON i.product_id = p.id, \
         websearch_to_tsquery('english', $1) query \
         WHERE p.active AND p.search @@ query \
         ORDER BY ts_rank_cd(p.search, query) DESC, p.popularity DESC, p.id LIMIT $2 OFFSET $3"
    );
    let rows = state
        .db
        .read(from)
        .await?
        .query(&sql, &[&q, &page.fetch(), &page.offset()])
        .await?;
    let found = ProductPage::from_rows(&rows, page);
    Ok(Json(SearchResults {
        query: q.to_owned(),
        products: found.products,
        page: found.page,
        limit: found.limit,
        has_more: found.has_more,
    }))
}
