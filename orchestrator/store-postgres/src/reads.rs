//! Reads, over a small pool of connections apart from the writer's.
//!
//! Every read is one statement, so the pool is a plain round robin: a
//! tokio-postgres client pipelines the queries of concurrent callers, and
//! nothing is checked out or returned. A read sees every commit that was
//! acknowledged before it started, since a commit is acknowledged only after
//! its transaction committed.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use futures_util::future::try_join_all;
use prost::Message;
use sagaflow_proto::v1::{HistoryEvent, WorkflowSummary};
use sagaflow_store::{
    DefinitionRecord, Error, IndexPage, Lease, ListQuery, OutboxRecord, QueuePauseRecord, Result, TaskKey, TaskRecord,
    TimerRecord,
};
use tokio_postgres::types::ToSql;
use tokio_postgres::{Client, Row, Statement};

use crate::plan::decode_batch;
use crate::writer::Shared;
use crate::{engine, open, storable};

pub(crate) struct Readers {
    connections: Vec<Reader>,
    next: AtomicUsize,
}

struct Reader {
    client: Client,
    st: Statements,
}

/// The reads' statements, prepared once per connection.
struct Statements {
    history: Statement,
    last_seq: Statement,
    summary: Statement,
    open_first: Statement,
    open_after: Statement,
    all_first: Statement,
    all_after: Statement,
    request: Statement,
    tasks_first: Statement,
    tasks_after: Statement,
    leases_first: Statement,
    leases_after: Statement,
    timers_first: Statement,
    timers_after: Statement,
    outbox: Statement,
    outbox_floor: Statement,
    definitions: Statement,
    queue_pauses: Statement,
}

impl Statements {
    async fn prepare(client: &Client) -> Result<Self> {
        let p = |sql: &'static str| async move { client.prepare(sql).await.map_err(engine(sql)) };
        Ok(Self {
            history: p("SELECT last_seq, events FROM history_batches
                WHERE workflow_id = $1 AND last_seq >= $2 ORDER BY last_seq LIMIT $3")
            .await?,
            last_seq: p("SELECT last_seq FROM histories WHERE workflow_id = $1").await?,
            summary: p("SELECT summary FROM summaries WHERE workflow_id = $1").await?,
            open_first: p("SELECT workflow_id FROM summaries WHERE open ORDER BY workflow_id LIMIT $1").await?,
            open_after: p("SELECT workflow_id FROM summaries WHERE open AND workflow_id > $1
                ORDER BY workflow_id LIMIT $2")
            .await?,
            all_first: p("SELECT workflow_id FROM histories WHERE last_seq > 0 ORDER BY workflow_id LIMIT $1").await?,
            all_after: p("SELECT workflow_id FROM histories WHERE last_seq > 0 AND workflow_id > $1
                ORDER BY workflow_id LIMIT $2")
            .await?,
            request: p("SELECT workflow_id FROM requests WHERE request_id = $1").await?,
            tasks_first: p("SELECT workflow_id, task_id, record FROM tasks ORDER BY workflow_id, task_id LIMIT $1")
                .await?,
            tasks_after: p("SELECT workflow_id, task_id, record FROM tasks WHERE (workflow_id, task_id) > ($1, $2)
                ORDER BY workflow_id, task_id LIMIT $3")
            .await?,
            leases_first: p("SELECT workflow_id, task_id, lease FROM leases ORDER BY workflow_id, task_id LIMIT $1")
                .await?,
            leases_after: p("SELECT workflow_id, task_id, lease FROM leases WHERE (workflow_id, task_id) > ($1, $2)
                ORDER BY workflow_id, task_id LIMIT $3")
            .await?,
            timers_first: p("SELECT fire_at_ms, workflow_id, timer_id FROM timers
                ORDER BY fire_at_ms, workflow_id, timer_id LIMIT $1")
            .await?,
            timers_after: p("SELECT fire_at_ms, workflow_id, timer_id FROM timers
                WHERE (fire_at_ms, workflow_id, timer_id) > ($1, $2, $3)
                ORDER BY fire_at_ms, workflow_id, timer_id LIMIT $4")
            .await?,
            outbox: p("SELECT seq, record FROM outbox WHERE seq > $1 ORDER BY seq LIMIT $2").await?,
            outbox_floor: p("SELECT value FROM sagaflow_meta WHERE name = 'outbox_floor'").await?,
            definitions: p("SELECT workflow_type, version, record FROM definitions ORDER BY workflow_type, version")
                .await?,
            queue_pauses: p("SELECT queue, record FROM queue_pauses ORDER BY queue").await?,
        })
    }
}

/// A row count or position as a SQL `bigint`: larger ones cannot be stored,
/// so reading "up to" one means reading everything.
fn big(n: impl TryInto<i64>) -> i64 {
    n.try_into().unwrap_or(i64::MAX)
}

/// A stored `bigint` that is never negative (a sequence number).
fn unsigned(n: i64, key: impl FnOnce() -> String) -> Result<u64> {
    u64::try_from(n).map_err(|_| Error::Corrupt { key: key(), reason: format!("negative number {n}") })
}

fn decode<M: Message + Default>(bytes: &[u8], key: impl FnOnce() -> String) -> Result<M> {
    M::decode(bytes).map_err(|e| Error::Corrupt { key: key(), reason: e.to_string() })
}

fn get<'a, T: tokio_postgres::types::FromSql<'a>>(row: &'a Row, column: usize, table: &str) -> Result<T> {
    row.try_get(column).map_err(|e| Error::Corrupt { key: table.to_owned(), reason: e.to_string() })
}

impl Readers {
    pub(crate) async fn connect(url: &str, count: usize, shared: &Arc<Shared>) -> Result<Self> {
        let connections = try_join_all((0..count.max(1)).map(|_| async {
            let client = open(url, "reader", Some(Arc::clone(shared))).await?;
            let st = Statements::prepare(&client).await?;
            Ok::<_, Error>(Reader { client, st })
        }))
        .await?;
        Ok(Self { connections, next: AtomicUsize::new(0) })
    }

    /// A connection for a statement of its own (the shard leases).
    pub(crate) fn client(&self) -> &Client {
        &self.pick().client
    }

    fn pick(&self) -> &Reader {
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.connections.len();
        &self.connections[i]
    }

    async fn query(
        &self,
        pick: impl FnOnce(&Statements) -> &Statement,
        params: &[&(dyn ToSql + Sync)],
        doing: &str,
    ) -> Result<Vec<Row>> {
        let reader = self.pick();
        reader.client.query(pick(&reader.st), params).await.map_err(engine(doing))
    }

    pub(crate) async fn history(&self, workflow_id: &str, from_seq: u64, limit: usize) -> Result<Vec<HistoryEvent>> {
        if limit == 0 || !storable(workflow_id) {
            return Ok(Vec::new());
        }
        let from_seq = from_seq.max(1);
        let Ok(from) = i64::try_from(from_seq) else {
            return Ok(Vec::new());
        };
        // Each batch holds at least one event at or past `from_seq`, so
        // `limit` batches hold enough.
        let rows = self.query(|s| &s.history, &[&workflow_id, &from, &big(limit)], "reading a history").await?;
        let mut events: Vec<HistoryEvent> = Vec::new();
        for row in &rows {
            let last: i64 = get(row, 0, "history_batches")?;
            let key = || format!("history_batches ({workflow_id}, {last})");
            let batch = decode_batch(get(row, 1, "history_batches")?)
                .map_err(|e| Error::Corrupt { key: key(), reason: e.to_string() })?;
            for event in batch {
                if events.len() >= limit {
                    return Ok(events);
                }
                if event.seq >= from_seq && events.last().is_none_or(|prev| event.seq > prev.seq) {
                    events.push(event);
                }
            }
        }
        Ok(events)
    }

    pub(crate) async fn last_seq(&self, workflow_id: &str) -> Result<u64> {
        if !storable(workflow_id) {
            return Ok(0);
        }
        let rows = self.query(|s| &s.last_seq, &[&workflow_id], "reading a history's length").await?;
        match rows.first() {
            Some(row) => unsigned(get(row, 0, "histories")?, || format!("histories ({workflow_id})")),
            None => Ok(0),
        }
    }

    pub(crate) async fn summary(&self, workflow_id: &str) -> Result<Option<WorkflowSummary>> {
        if !storable(workflow_id) {
            return Ok(None);
        }
        let rows = self.query(|s| &s.summary, &[&workflow_id], "reading a summary").await?;
        rows.first().map(|row| decode(get(row, 0, "summaries")?, || format!("summaries ({workflow_id})"))).transpose()
    }

    pub(crate) async fn list(&self, query: &ListQuery) -> Result<IndexPage> {
        let Some(sql) = ListSql::of(query) else {
            return Ok(IndexPage::default());
        };
        let params: Vec<&(dyn ToSql + Sync)> = sql.params.iter().map(|p| &**p as &(dyn ToSql + Sync)).collect();
        let reader = self.pick();
        let rows = reader.client.query(sql.text.as_str(), &params).await.map_err(engine("listing workflows"))?;
        let mut page = IndexPage::default();
        let more = rows.len() > sql.page;
        for row in rows.iter().take(sql.page) {
            let id: String = get(row, 0, "summaries")?;
            let summary: WorkflowSummary = decode(get(row, 1, "summaries")?, || format!("summaries ({id})"))?;
            // The database applied the filter; this only guards against a
            // disagreement with the reference (a label named twice, say).
            if query.filter.matches(&summary) {
                page.workflows.push(summary);
            }
            if more {
                page.next_after = Some(id);
            }
        }
        Ok(page)
    }

    pub(crate) async fn open_workflows(&self, after: Option<&str>, limit: usize) -> Result<Vec<String>> {
        let rows = match after {
            Some(after) if !storable(after) => return Ok(Vec::new()),
            Some(after) => self.query(|s| &s.open_after, &[&after, &big(limit)], "paging open workflows").await?,
            None => self.query(|s| &s.open_first, &[&big(limit)], "paging open workflows").await?,
        };
        rows.iter().map(|row| get(row, 0, "summaries")).collect()
    }

    pub(crate) async fn all_workflows(&self, after: Option<&str>, limit: usize) -> Result<Vec<String>> {
        let rows = match after {
            Some(after) if !storable(after) => return Ok(Vec::new()),
            Some(after) => self.query(|s| &s.all_after, &[&after, &big(limit)], "paging workflows").await?,
            None => self.query(|s| &s.all_first, &[&big(limit)], "paging workflows").await?,
        };
        rows.iter().map(|row| get(row, 0, "histories")).collect()
    }

    pub(crate) async fn workflow_for_request(&self, request_id: &str) -> Result<Option<String>> {
        if !storable(request_id) {
            return Ok(None);
        }
        let rows = self.query(|s| &s.request, &[&request_id], "reading a request id").await?;
        rows.first().map(|row| get(row, 0, "requests")).transpose()
    }

    pub(crate) async fn tasks(&self, after: Option<&TaskKey>, limit: usize) -> Result<Vec<TaskRecord>> {
        let rows = match after {
            Some((wf, task)) if !storable(wf) || !storable(task) => return Ok(Vec::new()),
            Some((wf, task)) => self.query(|s| &s.tasks_after, &[wf, task, &big(limit)], "paging tasks").await?,
            None => self.query(|s| &s.tasks_first, &[&big(limit)], "paging tasks").await?,
        };
        rows.iter()
            .map(|row| {
                let (wf, task): (&str, &str) = (get(row, 0, "tasks")?, get(row, 1, "tasks")?);
                decode(get(row, 2, "tasks")?, || format!("tasks ({wf}, {task})"))
            })
            .collect()
    }

    pub(crate) async fn leases(&self, after: Option<&TaskKey>, limit: usize) -> Result<Vec<(String, String, Lease)>> {
        let rows = match after {
            Some((wf, task)) if !storable(wf) || !storable(task) => return Ok(Vec::new()),
            Some((wf, task)) => self.query(|s| &s.leases_after, &[wf, task, &big(limit)], "paging leases").await?,
            None => self.query(|s| &s.leases_first, &[&big(limit)], "paging leases").await?,
        };
        rows.iter()
            .map(|row| {
                let (wf, task): (String, String) = (get(row, 0, "leases")?, get(row, 1, "leases")?);
                let lease = decode(get(row, 2, "leases")?, || format!("leases ({wf}, {task})"))?;
                Ok((wf, task, lease))
            })
            .collect()
    }

    pub(crate) async fn timers(&self, after: Option<&TimerRecord>, limit: usize) -> Result<Vec<TimerRecord>> {
        let rows = match after {
            Some(t) if !storable(&t.workflow_id) || !storable(&t.timer_id) => return Ok(Vec::new()),
            Some(t) => {
                let params: [&(dyn ToSql + Sync); 4] = [&t.fire_at_ms, &t.workflow_id, &t.timer_id, &big(limit)];
                self.query(|s| &s.timers_after, &params, "paging timers").await?
            }
            None => self.query(|s| &s.timers_first, &[&big(limit)], "paging timers").await?,
        };
        rows.iter()
            .map(|row| {
                Ok(TimerRecord {
                    fire_at_ms: get(row, 0, "timers")?,
                    workflow_id: get(row, 1, "timers")?,
                    timer_id: get(row, 2, "timers")?,
                })
            })
            .collect()
    }

    pub(crate) async fn outbox(&self, after: u64, limit: usize) -> Result<Vec<OutboxRecord>> {
        let Ok(after) = i64::try_from(after) else {
            return Ok(Vec::new());
        };
        let rows = self.query(|s| &s.outbox, &[&after, &big(limit)], "reading the outbox").await?;
        rows.iter()
            .map(|row| {
                let seq: i64 = get(row, 0, "outbox")?;
                let key = || format!("outbox ({seq})");
                let mut record: OutboxRecord = decode(get(row, 1, "outbox")?, key)?;
                record.seq = unsigned(seq, key)?;
                Ok(record)
            })
            .collect()
    }

    pub(crate) async fn outbox_floor(&self) -> Result<u64> {
        let rows = self.query(|s| &s.outbox_floor, &[], "reading the outbox floor").await?;
        match rows.first() {
            Some(row) => unsigned(get(row, 0, "sagaflow_meta")?, || "sagaflow_meta (outbox_floor)".into()),
            None => Err(Error::Corrupt { key: "sagaflow_meta (outbox_floor)".into(), reason: "missing row".into() }),
        }
    }

    pub(crate) async fn definitions(&self) -> Result<Vec<DefinitionRecord>> {
        let rows = self.query(|s| &s.definitions, &[], "reading definitions").await?;
        rows.iter()
            .map(|row| {
                let (kind, version): (&str, i64) = (get(row, 0, "definitions")?, get(row, 1, "definitions")?);
                decode(get(row, 2, "definitions")?, || format!("definitions ({kind}, {version})"))
            })
            .collect()
    }

    pub(crate) async fn queue_pauses(&self) -> Result<Vec<QueuePauseRecord>> {
        let rows = self.query(|s| &s.queue_pauses, &[], "reading queue pauses").await?;
        rows.iter()
            .map(|row| {
                let queue: &str = get(row, 0, "queue_pauses")?;
                decode(get(row, 1, "queue_pauses")?, || format!("queue_pauses ({queue})"))
            })
            .collect()
    }
}

/// A [`ListQuery`] as one statement: the filter becomes the WHERE clause.
struct ListSql {
    text: String,
    params: Vec<Box<dyn ToSql + Sync + Send>>,
    /// Rows in the page; the statement reads one more to learn whether more follow.
    page: usize,
}

impl ListSql {
    /// `None` when no row can match (an empty page, or a value the database
    /// cannot hold).
    fn of(query: &ListQuery) -> Option<Self> {
        let filter = &query.filter;
        // With the filter pushed down every row read is a match, so the scan
        // budget bounds the page as the limit does.
        let page = query.limit.min(query.scan_budget);
        let texts = std::iter::once(query.id_prefix.as_str())
            .chain(query.after.as_deref())
            .chain(std::iter::once(filter.workflow_type.as_str()))
            .chain(filter.labels.iter().flat_map(|(k, v)| [k.as_str(), v.as_str()]));
        if page == 0 || !texts.into_iter().all(storable) {
            return None;
        }
        let mut sql =
            Self { text: "SELECT workflow_id, summary FROM summaries WHERE true".into(), params: Vec::new(), page };
        if !query.id_prefix.is_empty() {
            sql.push(" AND workflow_id LIKE ", format!("{}%", escape_like(&query.id_prefix)));
            sql.text.push_str(" ESCAPE '\\'");
        }
        if let Some(after) = &query.after {
            sql.push(" AND workflow_id > ", after.clone());
        }
        if !filter.statuses.is_empty() {
            sql.push(" AND status = ANY(", filter.statuses.clone());
            sql.text.push(')');
        }
        if !filter.workflow_type.is_empty() {
            sql.push(" AND workflow_type = ", filter.workflow_type.clone());
        }
        if !filter.labels.is_empty() {
            let labels: serde_json::Map<String, serde_json::Value> =
                filter.labels.iter().map(|(k, v)| (k.clone(), serde_json::Value::String(v.clone()))).collect();
            sql.push(" AND labels @> ", serde_json::Value::Object(labels));
        }
        if filter.stuck_only {
            sql.text.push_str(" AND stuck");
        }
        if filter.paused_only {
            sql.text.push_str(" AND paused");
        }
        if let Some(at) = filter.closed_at_or_before_ms {
            sql.push(" AND NOT open AND closed_ms > 0 AND closed_ms <= ", at);
        }
        let limit = big(page.saturating_add(1));
        sql.push(" ORDER BY workflow_id LIMIT ", limit);
        Some(sql)
    }

    fn push(&mut self, clause: &str, param: impl ToSql + Sync + Send + 'static) {
        self.params.push(Box::new(param));
        self.text.push_str(clause);
        self.text.push_str(&format!("${}", self.params.len()));
    }
}

/// `prefix` as a LIKE pattern's literal start: `%`, `_` and the escape
/// character itself match only themselves.
fn escape_like(prefix: &str) -> String {
    let mut escaped = String::with_capacity(prefix.len());
    for c in prefix.chars() {
        if matches!(c, '%' | '_' | '\\') {
            escaped.push('\\');
        }
        escaped.push(c);
    }
    escaped
}

#[cfg(test)]
mod tests {
    use sagaflow_store::WorkflowFilter;

    use super::*;

    #[test]
    fn like_wildcards_in_a_prefix_match_only_themselves() {
        assert_eq!(escape_like("a_b%c\\d"), "a\\_b\\%c\\\\d");
    }

    #[test]
    fn a_filter_becomes_one_where_clause_with_a_parameter_per_value() {
        let query = ListQuery {
            id_prefix: "wf-".into(),
            after: Some("wf-1".into()),
            limit: 10,
            scan_budget: 4,
            filter: WorkflowFilter {
                statuses: vec![1, 2],
                workflow_type: "trip".into(),
                labels: vec![("tenant".into(), "a".into())],
                stuck_only: true,
                paused_only: true,
                closed_at_or_before_ms: Some(5),
            },
        };
        let Some(sql) = ListSql::of(&query) else { panic!("a page of four") };
        assert_eq!(
            sql.text,
            "SELECT workflow_id, summary FROM summaries WHERE true AND workflow_id LIKE $1 ESCAPE '\\' \
             AND workflow_id > $2 AND status = ANY($3) AND workflow_type = $4 AND labels @> $5 AND stuck AND paused \
             AND NOT open AND closed_ms > 0 AND closed_ms <= $6 ORDER BY workflow_id LIMIT $7"
        );
        assert_eq!(sql.params.len(), 7);
        assert_eq!(sql.page, 4, "the scan budget bounds the page");
        let empty = ListQuery { limit: 0, scan_budget: 9, ..Default::default() };
        assert!(ListSql::of(&empty).is_none());
    }
}
