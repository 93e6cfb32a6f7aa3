//! Node ids leased in the database, so no two live instances ever share one.
//!
//! A Snowflake node id must be unique among the instances that make ids into one database
//! (coordinators on one log, order-svcs on one order book): two instances with one id make the
//! same ids and steal each other's claims. Configuration alone cannot promise that, so each
//! instance leases its id in a `node_leases` row (its service's migrations create the table)
//! and renews it with a heartbeat:
//!
//! 1. **Take**: a free id, or one whose heartbeat is older than `stale`, is taken at once.
//! 2. **Tell a dead holder from a live one**: a fresh row may belong to a predecessor that was
//!    just killed. Wait until it would be stale; if its heartbeat moved meanwhile, a live
//!    instance holds the id and start-up is refused ([`NodeError::Taken`]); if not, take it.
//! 3. **Hold**: a heartbeat every `stale / 3` renews the row; when renewals fail for longer than
//!    `stale` (or another instance took the row), [`NodeLease::is_held`] turns false and the
//!    holder must stop making ids.

use crate::{now_ms, Db, StoreError};
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Why a node id could not be leased.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error(
        "node id {node} is in use by a live instance ({owner}); give this instance another one"
    )]
    Taken { node: u16, owner: String },
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The clock is too far behind the largest id already stored (or ids cannot be made).
    #[error(transparent)]
    Id(#[from] ids::IdError),
}

impl From<sqlx::Error> for NodeError {
    fn from(e: sqlx::Error) -> Self {
        NodeError::Store(e.into())
    }
}

/// A held node id. Cheap to clone.
#[derive(Debug, Clone)]
pub struct NodeLease {
    db: Db,
    node: u16,
    owner: String,
    stale: Duration,
    held: Arc<AtomicBool>,
    renewed_at: Arc<AtomicI64>,
}

/// What [`snowflake`] needs to know.
#[derive(Debug, Clone)]
pub struct IdSource<'a> {
    pub node: u16,
    /// This instance's name in the lease row.
    pub owner: &'a str,
    /// How long an unrenewed lease holds.
    pub stale: Duration,
    /// One statement reading the largest id ever stored (`SELECT CAST(MAX(id) AS BIGINT) …`):
    /// every id is stored before anyone sees it, so ids resume above it.
    pub high_water_sql: &'a str,
    /// How far the clock may be behind that id: waited out below, refused above.
    pub max_clock_behind: Duration,
}

/// The Snowflake generator of a service that stores its ids in `db`: its node id leased (and
/// renewed until `stop`), resuming above the largest stored id, after waiting for a clock that
/// is behind it. Should it fail after the lease was taken, the heartbeat ends with `stop`.
pub async fn snowflake(
    db: &Db,
    source: IdSource<'_>,
    stop: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(ids::Snowflake, NodeLease), NodeError> {
    let mut ids = ids::Snowflake::new(source.node)?;
    let lease = NodeLease::acquire(db, source.node, source.owner, source.stale).await?;
    // Renewed from now on: the waits below must not let it lapse.
    lease.spawn_heartbeat(stop);
    // Read once the id is ours: nobody else can add ids of this node any more.
    let high_water: Option<i64> = sqlx::query_scalar(source.high_water_sql)
        .fetch_one(db.pool())
        .await?;
    if let Some(high_water) = high_water {
        ids = ids.resume_after(ids::Gid::from_i64(high_water)?);
    }
    let behind = ids.behind_ms(source.max_clock_behind.as_millis() as u64)?;
    if behind > 0 {
        tracing::warn!(
            node = source.node,
            behind_ms = behind,
            "the clock is behind the largest id stored; waiting for it to pass"
        );
        tokio::time::sleep(Duration::from_millis(behind + 1)).await;
    }
    Ok((ids, lease))
}

impl NodeLease {
    /// Leases `node` for `owner` (see the module docs); may wait up to `stale` for a holder
    /// that stopped renewing.
    pub async fn acquire(
        db: &Db,
        node: u16,
        owner: &str,
        stale: Duration,
    ) -> Result<NodeLease, NodeError> {
        let stale_ms = stale.as_millis() as i64;
        let mut seen: Option<i64> = None;
        loop {
            let now = now_ms();
            let row: Option<(String, i64)> =
                sqlx::query_as("SELECT owner, heartbeat_at FROM node_leases WHERE node_id = $1")
                    .bind(i64::from(node))
                    .fetch_optional(db.pool())
                    .await?;
            let mut w = db.begin().await?;
            let taken = match &row {
                None => sqlx::query(
                    "INSERT INTO node_leases (node_id, owner, heartbeat_at) VALUES ($1, $2, $3) \
                     ON CONFLICT (node_id) DO NOTHING",
                )
                .bind(i64::from(node))
                .bind(owner)
                .bind(now)
                .execute(&mut *w)
                .await?
                .rows_affected(),
                Some((_, beat)) if *beat < now - stale_ms || seen == Some(*beat) => sqlx::query(
                    "UPDATE node_leases SET owner = $1, heartbeat_at = $2 WHERE node_id = $3 AND heartbeat_at = $4",
                )
                .bind(owner)
                .bind(now)
                .bind(i64::from(node))
                .bind(*beat)
                .execute(&mut *w)
                .await?
                .rows_affected(),
                Some((holder, beat)) => {
                    w.rollback().await?;
                    if seen.is_some() {
                        // The heartbeat moved while we waited: somebody is alive there.
                        return Err(NodeError::Taken {
                            node,
                            owner: holder.clone(),
                        });
                    }
                    seen = Some(*beat);
                    let wait = (beat + stale_ms - now).max(0) as u64 + 50;
                    tracing::warn!(
                        node,
                        holder = %holder,
                        wait_ms = wait,
                        "node id leased recently; waiting to see whether its holder is alive"
                    );
                    tokio::time::sleep(Duration::from_millis(wait)).await;
                    continue;
                }
            };
            w.commit().await?;
            if taken == 1 {
                return Ok(NodeLease {
                    db: db.clone(),
                    node,
                    owner: owner.to_owned(),
                    stale,
                    held: Arc::new(AtomicBool::new(true)),
                    renewed_at: Arc::new(AtomicI64::new(now)),
                });
            }
            // Lost a race for the row: look again.
        }
    }

    pub fn node(&self) -> u16 {
        self.node
    }

    /// Whether this instance certainly still holds its node id: renewed within `stale`, so no
    /// other instance can have taken it. A busy instance whose renewals wait in line can fall
    /// out of this for a moment: use it to decide what can wait (claiming others' work).
    pub fn is_held(&self) -> bool {
        self.held.load(Ordering::Acquire)
            && now_ms() - self.renewed_at.load(Ordering::Acquire) < self.stale.as_millis() as i64
    }

    /// Whether the lease is gone for good: a renewal found another instance's row, or it was
    /// given back. Making ids must stop then. (Between a takeover and the renewal that finds it
    /// both may make ids; the unique keys on stored ids refuse a repeat loudly.)
    pub fn is_lost(&self) -> bool {
        !self.held.load(Ordering::Acquire)
    }

    /// Renews the lease every `stale / 3` until `stop` resolves, then gives the id back.
    pub fn spawn_heartbeat(&self, stop: impl std::future::Future<Output = ()> + Send + 'static) {
        let lease = self.clone();
        tokio::spawn(async move {
            tokio::pin!(stop);
            loop {
                tokio::select! {
                    _ = &mut stop => break,
                    _ = tokio::time::sleep(lease.stale / 3) => {}
                }
                match lease.renew().await {
                    Ok(true) => {}
                    Ok(false) => {
                        tracing::error!(
                            node = lease.node,
                            "the node id lease was taken over; no more ids"
                        );
                        lease.held.store(false, Ordering::Release);
                        break;
                    }
                    Err(e) => {
                        tracing::warn!(node = lease.node, error = %e, "renewing the node id lease failed")
                    }
                }
            }
            let _ = lease.release().await;
        });
    }

    async fn renew(&self) -> Result<bool, StoreError> {
        let mut w = self.db.begin().await?;
        let now = now_ms();
        let renewed = sqlx::query(
            "UPDATE node_leases SET heartbeat_at = $1 WHERE node_id = $2 AND owner = $3",
        )
        .bind(now)
        .bind(i64::from(self.node))
        .bind(&self.owner)
        .execute(&mut *w)
        .await?
        .rows_affected()
            == 1;
        w.commit().await?;
        if renewed {
            self.renewed_at.store(now, Ordering::Release);
        }
        Ok(renewed)
    }

    /// Gives the id back (a clean shutdown), so a successor takes it at once.
    async fn release(&self) -> Result<(), StoreError> {
        self.held.store(false, Ordering::Release);
        let mut w = self.db.begin().await?;
        sqlx::query("DELETE FROM node_leases WHERE node_id = $1 AND owner = $2")
            .bind(i64::from(self.node))
            .bind(&self.owner)
            .execute(&mut *w)
            .await?;
        w.commit().await?;
        Ok(())
    }
}
