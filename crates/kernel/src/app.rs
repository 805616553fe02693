//! An app (tenant), as every crate sees it.

use serde::Serialize;
use utoipa::ToSchema;

use crate::{AppId, AppSettings};

/// An app (tenant) as the API shows it: no secrets. Durations are seconds, times Unix
/// seconds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct App {
    pub app_id: AppId,
    pub name: String,
    #[serde(flatten)]
    pub settings: AppSettings,
    pub created_at: i64,
    pub updated_at: i64,
}
