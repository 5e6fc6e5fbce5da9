//! Events, lifecycle marks, channels and deliveries on PostgreSQL (see `outbox.rs`).
//! Deliveries are claimed with `FOR UPDATE SKIP LOCKED`, like jobs.

use deadpool_postgres::GenericClient;
use tokio_postgres::Row;

use crate::outbox::{CHANNEL_COLS, DELIVERY_LIST_COLS, EVENT_COLS};
use crate::pg::{all, col, count, one};
use crate::pg_jobs::finish_tx;
use crate::{
    ChannelRecord, Conflict, CurrentVersion, DeliveryFilter, DeliveryJob, DeliveryNext,
    DeliveryOutcome, DeliveryRecord, EventFilter, EventRecord, Job, JobNext, LifecycleView, Mark,
    NewEvent, PgStore, StoreError,
};

pub(crate) fn event_row(r: &Row, o: usize) -> Result<EventRecord, StoreError> {
    let body: String = col(r, o + 9)?;
    Ok(EventRecord {
        id: col(r, o)?,
        uid: col(r, o + 1)?,
        kind: col(r, o + 2)?,
        vault_id: col(r, o + 3)?,
        vault: col(r, o + 4)?,
        cert_id: col(r, o + 5)?,
        cert_name: col(r, o + 6)?,
        version: col(r, o + 7)?,
        email: col(r, o + 8)?,
        body: serde_json::from_str(&body).unwrap_or(serde_json::Value::Null),
        created: col(r, o + 10)?,
    })
}

fn channel_row(r: &Row, o: usize) -> Result<ChannelRecord, StoreError> {
    Ok(ChannelRecord {
        id: col(r, o)?,
        vault_id: col(r, o + 1)?,
        name: col(r, o + 2)?,
        kind: col(r, o + 3)?,
        target: col(r, o + 4)?,
        sealed: col(r, o + 5)?,
        payload_version: col(r, o + 6)?,
        enabled: col(r, o + 7)?,
        created: col(r, o + 8)?,
        updated: col(r, o + 9)?,
    })
}

fn delivery_row(r: &Row) -> Result<DeliveryRecord, StoreError> {
    Ok(DeliveryRecord {
        id: col(r, 0)?,
        event_id: col(r, 1)?,
        event_uid: col(r, 2)?,
        event_kind: col(r, 3)?,
        cert_name: col(r, 4)?,
        channel: col(r, 5)?,
        status: col(r, 6)?,
        attempts: col(r, 7)?,
        next_try: col(r, 8)?,
        last_status: col(r, 9)?,
        last_error: col(r, 10)?,
        delivered_at: col(r, 11)?,
        created: col(r, 12)?,
    })
}

/// Records `e` (and, by trigger, its deliveries) unless its dedup key exists.
async fn insert_event<C: GenericClient>(c: &C, e: &NewEvent) -> Result<bool, StoreError> {
    let n = c
        .execute(
            "INSERT INTO events (uid, dedup, kind, vault_id, vault, cert_id, cert_name, version, \
             email, body, created) \
             SELECT replace(gen_random_uuid()::text, '-', ''), $2, $3, c.vault_id, va.name, c.id, \
             c.name, $4, $5, $6, $7 \
             FROM certificates c JOIN vaults va ON va.id = c.vault_id WHERE c.id = $1 \
             ON CONFLICT (dedup) DO NOTHING",
            &[
                &e.cert_id,
                &e.dedup,
                &e.kind,
                &e.version,
                &e.email,
                &e.body.to_string(),
                &e.created,
            ],
        )
        .await?;
    Ok(n > 0)
}

async fn get_channel<C: GenericClient>(
    c: &C,
    vault_id: i64,
    key: &str,
) -> Result<Option<ChannelRecord>, StoreError> {
    one(
        c,
        &format!(
            "SELECT {CHANNEL_COLS} FROM channels ch WHERE ch.vault_id = $1 AND ch.name_key = $2"
        ),
        &[&vault_id, &key],
        |r| channel_row(r, 0),
    )
    .await
}

async fn get_delivery<C: GenericClient>(c: &C, id: i64) -> Result<DeliveryRecord, StoreError> {
    one(
        c,
        &format!(
            "SELECT {DELIVERY_LIST_COLS} FROM deliveries d JOIN events e ON e.id = d.event_id \
             LEFT JOIN channels ch ON ch.id = d.channel_id WHERE d.id = $1"
        ),
        &[&id],
        delivery_row,
    )
    .await?
    .ok_or(StoreError::NotFound)
}

impl PgStore {
    /// Records an event unless its dedup key exists; whether it was recorded.
    pub async fn record_event(&self, e: NewEvent) -> Result<bool, StoreError> {
        let c = self.conn().await?;
        insert_event(&c, &e).await
    }

    /// What the lifecycle engine needs to plan certificate `cert_id`; `None` if it is gone.
    pub async fn lifecycle_view(&self, cert_id: i64) -> Result<Option<LifecycleView>, StoreError> {
        let mut c = self.conn().await?;
        let tx = c
            .build_transaction()
            .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
            .read_only(true)
            .start()
            .await?;
        let head = one(
            &tx,
            "SELECT c.vault_id, va.name, c.name, c.policy, c.deleted_at IS NOT NULL, \
             EXISTS (SELECT 1 FROM operations o WHERE o.cert_id = c.id AND o.status = 'inProgress') \
             FROM certificates c JOIN vaults va ON va.id = c.vault_id WHERE c.id = $1",
            &[&cert_id],
            |r| {
                Ok(LifecycleView {
                    cert_id,
                    vault_id: col(r, 0)?,
                    vault: col(r, 1)?,
                    name: col(r, 2)?,
                    policy: col(r, 3)?,
                    deleted: col(r, 4)?,
                    current: None,
                    op_in_progress: col(r, 5)?,
                })
            },
        )
        .await?;
        let Some(mut view) = head else {
            return Ok(None);
        };
        let cur = one(
            &tx,
            "SELECT version, nbf, exp, created FROM versions \
             WHERE cert_id = $1 AND cer IS NOT NULL ORDER BY seq DESC LIMIT 1",
            &[&cert_id],
            |r| {
                Ok(CurrentVersion {
                    version: col(r, 0)?,
                    nbf: col(r, 1)?,
                    exp: col(r, 2)?,
                    created: col(r, 3)?,
                    made: false,
                    marks: vec![],
                })
            },
        )
        .await?;
        if let Some(mut cur) = cur {
            let marks: Vec<String> = all(
                &tx,
                "SELECT mark FROM lifecycle_marks WHERE cert_id = $1 AND version = $2",
                &[&cert_id, &cur.version],
                |r| col(r, 0),
            )
            .await?;
            cur.made = marks.iter().any(|m| m == "made");
            cur.marks = marks;
            view.current = Some(cur);
        }
        tx.commit().await?;
        Ok(Some(view))
    }

    /// Records the outcome of a claimed job in one transaction (see
    /// [`crate::SqliteStore::job_outcome`]).
    pub async fn job_outcome(
        &self,
        job: &Job,
        events: Vec<NewEvent>,
        marks: Vec<Mark>,
        next: JobNext,
        now: i64,
    ) -> Result<bool, StoreError> {
        let mut c = self.conn().await?;
        let tx = c.transaction().await?;
        for e in &events {
            insert_event(&tx, e).await?;
        }
        for m in &marks {
            tx.execute(
                "INSERT INTO lifecycle_marks (cert_id, version, mark, at) \
                 SELECT $1, $2, $3, $4 WHERE EXISTS (SELECT 1 FROM certificates WHERE id = $1) \
                 ON CONFLICT DO NOTHING",
                &[&m.cert_id, &m.version, &m.mark, &now],
            )
            .await?;
        }
        let applied = finish_tx(&tx, job, &next).await?;
        tx.commit().await?;
        Ok(applied)
    }

    /// Events of a vault, oldest first.
    pub async fn events(
        &self,
        vault_id: i64,
        f: EventFilter,
    ) -> Result<Vec<EventRecord>, StoreError> {
        let c = self.conn().await?;
        all(
            &c,
            &format!(
                "SELECT {EVENT_COLS} FROM events e WHERE e.vault_id = $1 AND e.id > $2 \
                 AND ($3::text IS NULL OR lower(e.cert_name) = lower($3)) \
                 AND ($4::text IS NULL OR e.kind = $4) ORDER BY e.id LIMIT $5"
            ),
            &[
                &vault_id,
                &f.after,
                &f.cert_name,
                &f.kind,
                &f.limit.clamp(1, 1000),
            ],
            |r| event_row(r, 0),
        )
        .await
    }

    /// Creates a channel; `Conflict::Exists` when the name exists in the vault.
    pub async fn create_channel(&self, ch: ChannelRecord) -> Result<ChannelRecord, StoreError> {
        let key = ch.name.to_ascii_lowercase();
        let c = self.conn().await?;
        let out = one(
            &c,
            &format!(
                "INSERT INTO channels AS ch (vault_id, name, name_key, kind, target, sealed, \
                 payload_version, enabled, created, updated) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $9) \
                 ON CONFLICT DO NOTHING RETURNING {CHANNEL_COLS}"
            ),
            &[
                &ch.vault_id,
                &ch.name,
                &key,
                &ch.kind,
                &ch.target,
                &ch.sealed,
                &ch.payload_version,
                &ch.enabled,
                &ch.created,
            ],
            |r| channel_row(r, 0),
        )
        .await?
        .ok_or(StoreError::Conflict(Conflict::Exists))?;
        self.bump().await;
        Ok(out)
    }

    /// A channel by name.
    pub async fn channel(
        &self,
        vault_id: i64,
        name: &str,
    ) -> Result<Option<ChannelRecord>, StoreError> {
        let c = self.conn().await?;
        get_channel(&c, vault_id, &name.to_ascii_lowercase()).await
    }

    /// The channels of a vault, by name.
    pub async fn channels(&self, vault_id: i64) -> Result<Vec<ChannelRecord>, StoreError> {
        let c = self.conn().await?;
        all(
            &c,
            &format!(
                "SELECT {CHANNEL_COLS} FROM channels ch WHERE ch.vault_id = $1 ORDER BY ch.name_key"
            ),
            &[&vault_id],
            |r| channel_row(r, 0),
        )
        .await
    }

    /// Changes a channel's settings.
    pub async fn update_channel(&self, ch: ChannelRecord) -> Result<ChannelRecord, StoreError> {
        let c = self.conn().await?;
        let out = one(
            &c,
            &format!(
                "UPDATE channels AS ch SET target = $2, sealed = $3, payload_version = $4, \
                 enabled = $5, updated = $6 WHERE ch.id = $1 RETURNING {CHANNEL_COLS}"
            ),
            &[
                &ch.id,
                &ch.target,
                &ch.sealed,
                &ch.payload_version,
                &ch.enabled,
                &ch.updated,
            ],
            |r| channel_row(r, 0),
        )
        .await?
        .ok_or(StoreError::NotFound)?;
        self.bump().await;
        Ok(out)
    }

    /// Deletes a channel with its deliveries.
    pub async fn delete_channel(&self, id: i64) -> Result<(), StoreError> {
        if self
            .exec("DELETE FROM channels WHERE id = $1", &[&id])
            .await?
            == 0
        {
            return Err(StoreError::NotFound);
        }
        Ok(())
    }

    /// Claims up to `limit` sendable deliveries (due, and first in their lane), leased to
    /// `owner` until `now + lease`; concurrent claimers (replicas) skip each other's rows.
    pub async fn claim_deliveries(
        &self,
        now: i64,
        owner: &str,
        lease: i64,
        limit: i64,
    ) -> Result<Vec<DeliveryJob>, StoreError> {
        let mut c = self.conn().await?;
        let tx = c.transaction().await?;
        let ids: Vec<i64> = all(
            &tx,
            "UPDATE deliveries SET next_try = $3, leased = 1, lease_owner = $4 WHERE id IN (\
             SELECT d.id FROM deliveries d \
             WHERE d.status = 'pending' AND d.next_try <= $1 \
             AND d.id = (SELECT MIN(e.id) FROM deliveries e WHERE e.lane = d.lane AND e.status = 'pending') \
             ORDER BY d.next_try LIMIT $2 FOR UPDATE OF d SKIP LOCKED) RETURNING id",
            &[&now, &limit, &now.saturating_add(lease), &owner],
            |r| col(r, 0),
        )
        .await?;
        let st = tx
            .prepare(&format!(
                "SELECT d.id, d.attempts, {EVENT_COLS}, ch.id IS NOT NULL, {CHANNEL_COLS} \
                 FROM deliveries d JOIN events e ON e.id = d.event_id \
                 LEFT JOIN channels ch ON ch.id = d.channel_id WHERE d.id = $1"
            ))
            .await?;
        let mut out = Vec::with_capacity(ids.len());
        for id in ids {
            let r = tx.query_one(&st, &[&id]).await?;
            let has_channel: bool = col(&r, 13)?;
            out.push(DeliveryJob {
                id: col(&r, 0)?,
                attempts: col(&r, 1)?,
                event: event_row(&r, 2)?,
                channel: if has_channel {
                    Some(channel_row(&r, 14)?)
                } else {
                    None
                },
            });
        }
        tx.commit().await?;
        out.sort_by_key(|d| d.id);
        Ok(out)
    }

    /// Records an attempt and moves the delivery on.
    pub async fn finish_delivery(&self, id: i64, o: DeliveryOutcome) -> Result<(), StoreError> {
        let (status, next_try, delivered_at, bump) = match o.next {
            DeliveryNext::Delivered => ("delivered", o.at, Some(o.at), 1i64),
            DeliveryNext::RetryAt(t) => ("pending", t, None, 1),
            DeliveryNext::Dead => ("dead", o.at, None, 1),
            DeliveryNext::Skipped => ("skipped", o.at, None, 0),
        };
        let mut c = self.conn().await?;
        let tx = c.transaction().await?;
        tx.execute(
            "UPDATE deliveries SET status = $2, next_try = $3, delivered_at = $4, \
             attempts = attempts + $5, last_status = $6, last_error = $7, leased = 0, lease_owner = NULL WHERE id = $1",
            &[
                &id,
                &status,
                &next_try,
                &delivered_at,
                &bump,
                &o.status_code,
                &o.error,
            ],
        )
        .await?;
        if bump > 0 {
            tx.execute(
                "INSERT INTO delivery_attempts (delivery_id, at, status_code, error, millis) \
                 VALUES ($1, $2, $3, $4, $5)",
                &[&id, &o.at, &o.status_code, &o.error, &o.millis],
            )
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Makes every leased delivery due at `now` (whoever holds the lease: only for a database
    /// no other process uses).
    pub async fn release_delivery_leases(&self, now: i64) -> Result<usize, StoreError> {
        let c = self.conn().await?;
        let n = c
            .execute(
                "UPDATE deliveries SET next_try = $1, leased = 0, lease_owner = NULL \
                 WHERE status = 'pending' AND leased = 1",
                &[&now],
            )
            .await?;
        Ok(count(n))
    }

    /// Makes the deliveries leased to `owner` due at `now` (a replica's clean shutdown: other
    /// replicas' leases stay).
    pub async fn release_delivery_leases_of(
        &self,
        owner: &str,
        now: i64,
    ) -> Result<usize, StoreError> {
        let c = self.conn().await?;
        let n = c
            .execute(
                "UPDATE deliveries SET next_try = $1, leased = 0, lease_owner = NULL \
                 WHERE status = 'pending' AND leased = 1 AND lease_owner = $2",
                &[&now, &owner],
            )
            .await?;
        Ok(count(n))
    }

    /// Deliveries of a vault, oldest first.
    pub async fn deliveries(
        &self,
        vault_id: i64,
        f: DeliveryFilter,
    ) -> Result<Vec<DeliveryRecord>, StoreError> {
        let c = self.conn().await?;
        all(
            &c,
            &format!(
                "SELECT {DELIVERY_LIST_COLS} FROM deliveries d JOIN events e ON e.id = d.event_id \
                 LEFT JOIN channels ch ON ch.id = d.channel_id \
                 WHERE d.vault_id = $1 AND d.id > $2 AND ($3::bigint IS NULL OR d.channel_id = $3) \
                 AND ($4::text IS NULL OR d.status = $4) ORDER BY d.id LIMIT $5"
            ),
            &[
                &vault_id,
                &f.after,
                &f.channel_id,
                &f.status,
                &f.limit.clamp(1, 1000),
            ],
            delivery_row,
        )
        .await
    }

    /// The attempts of a delivery: (at, status code, error, millis).
    pub async fn delivery_attempts(
        &self,
        delivery_id: i64,
    ) -> Result<Vec<(i64, Option<i64>, Option<String>, i64)>, StoreError> {
        let c = self.conn().await?;
        all(
            &c,
            "SELECT at, status_code, error, millis FROM delivery_attempts \
             WHERE delivery_id = $1 ORDER BY id",
            &[&delivery_id],
            |r| Ok((col(r, 0)?, col(r, 1)?, col(r, 2)?, col(r, 3)?)),
        )
        .await
    }

    /// Sends a dead (or skipped) delivery again; refused unless it is dead or skipped.
    pub async fn replay_delivery(
        &self,
        vault_id: i64,
        id: i64,
        now: i64,
    ) -> Result<DeliveryRecord, StoreError> {
        let mut c = self.conn().await?;
        let tx = c.transaction().await?;
        let status: Option<String> = one(
            &tx,
            "SELECT status FROM deliveries WHERE id = $1 AND vault_id = $2 FOR UPDATE",
            &[&id, &vault_id],
            |r| col(r, 0),
        )
        .await?;
        match status.as_deref() {
            None => return Err(StoreError::NotFound),
            Some("dead" | "skipped") => {}
            Some(_) => return Err(StoreError::Conflict(Conflict::State)),
        }
        tx.execute(
            "UPDATE deliveries SET status = 'pending', attempts = 0, next_try = $2, leased = 0 \
             WHERE id = $1",
            &[&id, &now],
        )
        .await?;
        let out = get_delivery(&tx, id).await?;
        tx.commit().await?;
        Ok(out)
    }
}
