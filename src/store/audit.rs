//! The audit log: who did what, when, from where.

use std::time::SystemTime;

use uuid::Uuid;

use super::{Origin, PostgresOperation, Store, StoreError};

#[derive(Debug, Clone)]
pub struct AuditEntry {
    pub at: SystemTime,
    pub event: String,
    pub user_id: Option<Uuid>,
    pub ip_address: Option<String>,
    pub user_agent: Option<String>,
    pub detail: serde_json::Value,
}

impl Store {
    pub async fn audit(
        &self,
        client: &impl deadpool_postgres::GenericClient,
        event: &str,
        user_id: Option<Uuid>,
        origin: Origin<'_>,
        detail: &serde_json::Value,
        now: SystemTime,
    ) -> Result<(), StoreError> {
        let _timer = self.timer(PostgresOperation::Audit);
        client
            .execute(
                "INSERT INTO audit_log (at, event, user_id, ip_address, user_agent, detail) VALUES ($1, $2, $3, $4, $5, $6)",
                &[&now, &event, &user_id, &origin.ip_address, &origin.user_agent, detail],
            )
            .await?;
        Ok(())
    }

    /// The newest entries first, optionally for one user.
    pub async fn audit_entries(
        &self,
        user_id: Option<Uuid>,
        limit: i64,
    ) -> Result<Vec<AuditEntry>, StoreError> {
        let _timer = self.timer(PostgresOperation::AuditEntries);
        let client = self.client().await?;
        let rows = client
            .query(
                "SELECT at, event, user_id, ip_address, user_agent, detail FROM audit_log
                 WHERE $1::uuid IS NULL OR user_id = $1
                 ORDER BY at DESC, id DESC LIMIT $2",
                &[&user_id, &limit],
            )
            .await?;
        Ok(rows
            .iter()
            .map(|row| AuditEntry {
                at: row.get(0),
                event: row.get(1),
                user_id: row.get(2),
                ip_address: row.get(3),
                user_agent: row.get(4),
                detail: row.get(5),
            })
            .collect())
    }
}
