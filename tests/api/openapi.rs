//! OpenAPI document tests (below).
