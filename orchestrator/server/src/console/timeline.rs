//! A workflow's history as a timeline: one lane per step (and one per
//! step's compensation), each attempt a bar from when it was scheduled to
//! its answer, the backoff before the next attempt, timers, and marks for
//! what happened to the workflow as a whole (signals, the compensation's
//! start, escalations, stuck flags, pauses, its end).
//!
//! [`layout`] is pure (history in, geometry-free layout out) and tested on
//! its own; [`svg`] draws a layout as inline SVG, styled by the console's
//! stylesheet (the page's Content-Security-Policy allows no inline style).

use std::collections::HashMap;

use maud::{Markup, html};
use sagaflow_proto::v1::HistoryEvent;
use sagaflow_proto::v1::history_event::Attributes;

use super::format;

/// What a step of the definition tells the timeline.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StepInfo {
    pub name: String,
    /// The signal an `await_signal` step waits for.
    pub signal: Option<String>,
}

/// What [`layout`] needs beside the history.
#[derive(Debug, Clone, Default)]
pub struct Context<'a> {
    /// The definition's steps, by index (for timers, named by index).
    pub steps: &'a [StepInfo],
    /// Now, for what is still under way.
    pub now_ms: i64,
    /// The workflow is open: bars still under way run to `now_ms`.
    pub open: bool,
    /// The step an open workflow is at (`WorkflowSummary::current_step`).
    pub current_step: &'a str,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BarKind {
    /// One attempt of an activity: scheduled, then taken by a worker.
    Attempt { attempt: u32 },
    /// The wait before the next attempt.
    Backoff,
    /// A sleep or a signal's deadline.
    Timer,
    /// Waiting for a signal (with no deadline: there is no timer).
    Waiting,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Completed,
    Failed {
        error: String,
    },
    TimedOut {
        timeout: String,
    },
    /// An operator recorded what the attempts did.
    Resolved {
        outcome: String,
    },
    /// Still under way (an attempt, a backoff, a timer not fired yet).
    Running,
    /// The workflow closed while it was under way.
    Abandoned,
    /// A timer fired, a backoff ran out, a signal came.
    Done,
}

impl Outcome {
    /// The CSS class and `data-outcome` of a bar.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Completed => "completed",
            Self::Failed { .. } => "failed",
            Self::TimedOut { .. } => "timed-out",
            Self::Resolved { .. } => "resolved",
            Self::Running => "running",
            Self::Abandoned => "abandoned",
            Self::Done => "done",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bar {
    pub kind: BarKind,
    pub from_ms: i64,
    pub to_ms: i64,
    /// When a worker took the attempt: the part before is queue wait.
    pub started_ms: Option<i64>,
    pub outcome: Outcome,
    /// What a reader hovering over it is told.
    pub title: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MarkKind {
    Signal,
    Escalation,
    CancelRequested,
    CancelRefused,
    CompensationStarted,
    Stuck,
    StuckCleared,
    Paused,
    Resumed,
    Resolved,
    Skipped,
    Ignored,
    Held,
    Ended,
}

impl MarkKind {
    pub fn name(self) -> &'static str {
        match self {
            Self::Signal => "signal",
            Self::Escalation => "escalation",
            Self::CancelRequested => "cancel",
            Self::CancelRefused => "cancel-refused",
            Self::CompensationStarted => "compensation",
            Self::Stuck => "stuck",
            Self::StuckCleared => "stuck-cleared",
            Self::Paused => "paused",
            Self::Resumed => "resumed",
            Self::Resolved => "resolved",
            Self::Skipped => "skipped",
            Self::Ignored => "ignored",
            Self::Held => "held",
            Self::Ended => "ended",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mark {
    pub kind: MarkKind,
    pub at_ms: i64,
    pub title: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lane {
    /// `reserve`, `undo reserve`, `ship (notification)`.
    pub label: String,
    pub step: String,
    pub compensation: bool,
    pub bars: Vec<Bar>,
    pub marks: Vec<Mark>,
}

/// A history, laid out in time.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Layout {
    pub start_ms: i64,
    pub end_ms: i64,
    pub lanes: Vec<Lane>,
    /// Marks about the workflow as a whole.
    pub marks: Vec<Mark>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum LaneKind {
    Forward,
    Compensation,
    /// An escalation's notification, beside the step.
    Side,
}

struct Builder<'a> {
    context: &'a Context<'a>,
    layout: Layout,
    lanes: HashMap<(String, LaneKind), usize>,
    /// task id → (lane, bar)
    tasks: HashMap<String, (usize, usize)>,
    /// timer id → (lane, bar)
    timers: HashMap<String, (usize, usize)>,
}

impl Builder<'_> {
    fn lane(&mut self, step: &str, kind: LaneKind) -> usize {
        if let Some(index) = self.lanes.get(&(step.to_owned(), kind)) {
            return *index;
        }
        let label = match kind {
            LaneKind::Forward => step.to_owned(),
            LaneKind::Compensation => format!("undo {step}"),
            LaneKind::Side => format!("{step} (notification)"),
        };
        self.layout.lanes.push(Lane {
            label,
            step: step.to_owned(),
            compensation: kind == LaneKind::Compensation,
            bars: Vec::new(),
            marks: Vec::new(),
        });
        let index = self.layout.lanes.len() - 1;
        self.lanes.insert((step.to_owned(), kind), index);
        index
    }

    fn step_name(&self, index: usize) -> String {
        self.context.steps.get(index).map_or_else(|| format!("step {}", index + 1), |s| s.name.clone())
    }

    fn bar(&mut self, task_id: &str) -> Option<&mut Bar> {
        let (lane, bar) = *self.tasks.get(task_id)?;
        self.layout.lanes.get_mut(lane)?.bars.get_mut(bar)
    }

    /// Ends an attempt's bar; a next attempt due later adds its backoff.
    fn end_attempt(&mut self, task_id: &str, at: i64, outcome: Outcome, next_attempt_ms: i64) {
        let Some(&(lane, _)) = self.tasks.get(task_id) else { return };
        if let Some(bar) = self.bar(task_id) {
            bar.to_ms = at;
            let took = format::duration(at - bar.started_ms.unwrap_or(bar.from_ms));
            let what = match &outcome {
                Outcome::Completed => format!("completed in {took}"),
                Outcome::Failed { error } => format!("failed after {took}: {error}"),
                Outcome::TimedOut { timeout } => format!("timed out ({timeout}) after {took}"),
                other => other.name().to_owned(),
            };
            bar.title = format!("{}: {what}", bar.title);
            bar.outcome = outcome;
        }
        if next_attempt_ms > at
            && let Some(lane) = self.layout.lanes.get_mut(lane)
        {
            lane.bars.push(Bar {
                kind: BarKind::Backoff,
                from_ms: at,
                to_ms: next_attempt_ms,
                started_ms: None,
                outcome: Outcome::Running,
                title: format!(
                    "{}: backoff {} before the next attempt",
                    lane.label,
                    format::duration(next_attempt_ms - at)
                ),
            });
        }
    }

    /// A backoff that ran until a new attempt of its lane was scheduled.
    fn close_backoffs(&mut self, lane: usize, at: i64) {
        if let Some(lane) = self.layout.lanes.get_mut(lane) {
            for bar in lane.bars.iter_mut().filter(|b| b.kind == BarKind::Backoff && b.outcome == Outcome::Running) {
                bar.to_ms = bar.to_ms.min(at).max(bar.from_ms);
                bar.outcome = Outcome::Done;
            }
        }
    }

    fn mark(&mut self, kind: MarkKind, at_ms: i64, title: String) {
        self.layout.marks.push(Mark { kind, at_ms, title });
    }

    fn lane_mark(&mut self, step: &str, kind: MarkKind, at_ms: i64, title: String) {
        let lane = self.lane(step, LaneKind::Forward);
        if let Some(lane) = self.layout.lanes.get_mut(lane) {
            lane.marks.push(Mark { kind, at_ms, title });
        }
    }

    fn event(&mut self, event: &HistoryEvent) {
        let at = event.time_ms;
        let Some(attributes) = &event.attributes else { return };
        match attributes {
            Attributes::WorkflowStarted(_) => self.layout.start_ms = at,
            Attributes::ActivityScheduled(s) => {
                let side = crate::engine::is_side_task(&s.task_id);
                let kind = match (side, s.compensation) {
                    (true, _) => LaneKind::Side,
                    (false, true) => LaneKind::Compensation,
                    (false, false) => LaneKind::Forward,
                };
                let lane = self.lane(&s.step, kind);
                self.close_backoffs(lane, at);
                let Some(lane_ref) = self.layout.lanes.get_mut(lane) else { return };
                lane_ref.bars.push(Bar {
                    kind: BarKind::Attempt { attempt: s.attempt },
                    from_ms: at,
                    to_ms: at,
                    started_ms: None,
                    outcome: Outcome::Running,
                    title: format!("{} attempt {} ({})", lane_ref.label, s.attempt, s.activity_type),
                });
                let bar = lane_ref.bars.len() - 1;
                self.tasks.insert(s.task_id.clone(), (lane, bar));
            }
            Attributes::ActivityStarted(s) => {
                let started = if s.started_ms > 0 { s.started_ms } else { at };
                let worker = s.worker_id.clone();
                if let Some(bar) = self.bar(&s.task_id) {
                    bar.started_ms = Some(started.max(bar.from_ms));
                    bar.title = format!("{} by {worker}", bar.title);
                }
            }
            Attributes::ActivityCompleted(c) => self.end_attempt(&c.task_id, at, Outcome::Completed, 0),
            Attributes::ActivityFailed(f) => {
                let error = if f.message.is_empty() {
                    f.error_type.clone()
                } else {
                    format!("{}: {}", f.error_type, f.message)
                };
                self.end_attempt(&f.task_id, at, Outcome::Failed { error }, f.next_attempt_ms);
            }
            Attributes::ActivityTimedOut(t) => {
                let outcome = Outcome::TimedOut { timeout: t.timeout_type.clone() };
                self.end_attempt(&t.task_id, at, outcome, t.next_attempt_ms);
            }
            Attributes::TimerStarted(t) => {
                // A retry's timer is the backoff its failure already drew.
                let Some((purpose, index)) = t.timer_id.split_once('/') else { return };
                if purpose == "retry" {
                    return;
                }
                let Ok(index) = index.parse::<usize>() else { return };
                let step = self.step_name(index);
                let lane = self.lane(&step, LaneKind::Forward);
                let what = if purpose == "sleep" { "sleep".to_owned() } else { "deadline of its signal".to_owned() };
                let Some(lane_ref) = self.layout.lanes.get_mut(lane) else { return };
                lane_ref.bars.push(Bar {
                    kind: BarKind::Timer,
                    from_ms: at,
                    to_ms: t.fire_at_ms.max(at),
                    started_ms: None,
                    outcome: Outcome::Running,
                    title: format!("{step}: {what}, due {}", format::timestamp(t.fire_at_ms)),
                });
                let bar = lane_ref.bars.len() - 1;
                self.timers.insert(t.timer_id.clone(), (lane, bar));
            }
            Attributes::TimerFired(t) => {
                if let Some(&(lane, bar)) = self.timers.get(&t.timer_id)
                    && let Some(bar) = self.layout.lanes.get_mut(lane).and_then(|l| l.bars.get_mut(bar))
                {
                    bar.to_ms = at;
                    bar.outcome = Outcome::Done;
                    bar.title = format!("{}: fired", bar.title);
                }
            }
            Attributes::SignalReceived(s) => {
                // The wait of every step that awaits this signal ends here.
                let waiting: Vec<String> = self
                    .context
                    .steps
                    .iter()
                    .enumerate()
                    .filter(|(_, step)| step.signal.as_deref() == Some(s.name.as_str()))
                    .map(|(i, _)| format!("signal-timeout/{i}"))
                    .collect();
                for timer in waiting {
                    if let Some(&(lane, bar)) = self.timers.get(&timer)
                        && let Some(bar) = self.layout.lanes.get_mut(lane).and_then(|l| l.bars.get_mut(bar))
                        && bar.outcome == Outcome::Running
                    {
                        bar.to_ms = at;
                        bar.outcome = Outcome::Done;
                        bar.title = format!("{}: the signal came", bar.title);
                    }
                }
                let by = if s.identity.is_empty() { String::new() } else { format!(" from {}", s.identity) };
                self.mark(MarkKind::Signal, at, format!("signal {}{by}", s.name));
            }
            Attributes::CancelRequested(c) => {
                self.mark(MarkKind::CancelRequested, at, format!("cancel requested by {}: {}", c.identity, c.reason));
            }
            Attributes::CancelRefused(c) => {
                self.mark(MarkKind::CancelRefused, at, format!("cancel refused: {}", c.message));
            }
            Attributes::CompensationStarted(c) => {
                self.mark(MarkKind::CompensationStarted, at, format!("compensation started: {}", c.reason));
            }
            Attributes::StuckDetected(s) => {
                self.mark(MarkKind::Stuck, at, format!("flagged stuck {}: {}", s.reason, s.message));
            }
            Attributes::StuckCleared(s) => {
                self.mark(MarkKind::StuckCleared, at, format!("stuck flag cleared: {}", s.reason))
            }
            Attributes::WorkflowPaused(p) => {
                self.mark(MarkKind::Paused, at, format!("paused by {}: {}", p.identity, p.reason));
            }
            Attributes::WorkflowResumed(r) => self.mark(MarkKind::Resumed, at, format!("resumed by {}", r.identity)),
            Attributes::StepEscalated(e) => {
                let title = format!("{} escalated after attempt {}: {}", e.step, e.attempt, e.alert);
                self.lane_mark(&e.step, MarkKind::Escalation, at, title);
            }
            Attributes::ActivityResolved(r) => {
                let what = if r.compensation { format!("undo {}", r.step) } else { r.step.clone() };
                let title = format!("{what} resolved {} by {}: {}", r.outcome, r.identity, r.reason);
                let kind = if r.compensation { LaneKind::Compensation } else { LaneKind::Forward };
                let lane = self.lane(&r.step, kind);
                if let Some(lane) = self.layout.lanes.get_mut(lane) {
                    lane.marks.push(Mark { kind: MarkKind::Resolved, at_ms: at, title });
                }
            }
            Attributes::StepSkipped(s) => {
                self.lane_mark(
                    &s.step,
                    MarkKind::Skipped,
                    at,
                    format!("{} skipped: its condition did not hold", s.step),
                );
            }
            Attributes::CompletionIgnored(c) => {
                self.mark(
                    MarkKind::Ignored,
                    at,
                    format!("{} answer of {} ignored ({})", c.outcome, c.task_id, c.reason),
                );
            }
            Attributes::WorkflowHeld(h) => {
                self.mark(MarkKind::Held, at, format!("held for parent {}", h.parent_workflow_id));
            }
            Attributes::WorkflowCompleted(_) => self.end(at, "completed"),
            Attributes::WorkflowCompensated(c) => self.end(at, &format!("compensated: {}", c.reason)),
            Attributes::WorkflowFailed(f) => self.end(at, &format!("failed: {}", f.reason)),
            Attributes::WorkflowCancelled(c) => self.end(at, &format!("cancelled: {}", c.reason)),
            Attributes::WorkflowTerminated(t) => self.end(at, &format!("terminated by {}: {}", t.identity, t.reason)),
        }
    }

    fn end(&mut self, at: i64, what: &str) {
        self.layout.end_ms = at;
        self.mark(MarkKind::Ended, at, format!("workflow {what}"));
    }

    fn finish(mut self, last_event_ms: i64) -> Layout {
        let open = self.context.open;
        let end = if open { self.context.now_ms.max(last_event_ms) } else { self.layout.end_ms.max(last_event_ms) };
        // An open workflow parked on a signal with no deadline: draw the wait.
        if open && !self.context.current_step.is_empty() {
            let waits = self.context.steps.iter().any(|s| s.name == self.context.current_step && s.signal.is_some());
            let lane = self.lanes.get(&(self.context.current_step.to_owned(), LaneKind::Forward)).copied();
            let under_way = lane
                .and_then(|l| self.layout.lanes.get(l))
                .is_some_and(|l| l.bars.iter().any(|b| b.outcome == Outcome::Running));
            if waits && !under_way {
                let step = self.context.current_step.to_owned();
                let signal = self
                    .context
                    .steps
                    .iter()
                    .find(|s| s.name == step)
                    .and_then(|s| s.signal.clone())
                    .unwrap_or_default();
                let lane = self.lane(&step, LaneKind::Forward);
                if let Some(lane) = self.layout.lanes.get_mut(lane) {
                    lane.bars.push(Bar {
                        kind: BarKind::Waiting,
                        from_ms: last_event_ms,
                        to_ms: end,
                        started_ms: None,
                        outcome: Outcome::Running,
                        title: format!("{step}: waiting for signal {signal}"),
                    });
                }
            }
        }
        let mut latest = end;
        for lane in &mut self.layout.lanes {
            for bar in &mut lane.bars {
                if bar.outcome == Outcome::Running {
                    match bar.kind {
                        // Due later: drawn to when it is due.
                        BarKind::Backoff | BarKind::Timer if open => latest = latest.max(bar.to_ms),
                        BarKind::Attempt { .. } | BarKind::Waiting if open => bar.to_ms = end,
                        _ => {
                            bar.to_ms = bar.to_ms.min(end).max(bar.from_ms);
                            bar.outcome = Outcome::Abandoned;
                        }
                    }
                }
            }
        }
        self.layout.end_ms = latest.max(self.layout.start_ms);
        self.layout
    }
}

/// Lays out a history (in sequence order, from its first event).
pub fn layout(events: &[HistoryEvent], context: &Context<'_>) -> Layout {
    let mut builder = Builder {
        context,
        layout: Layout::default(),
        lanes: HashMap::new(),
        tasks: HashMap::new(),
        timers: HashMap::new(),
    };
    if let Some(first) = events.first() {
        builder.layout.start_ms = first.time_ms;
    }
    for event in events {
        builder.event(event);
    }
    let last = events.last().map_or(0, |e| e.time_ms);
    builder.finish(last)
}

/// The drawing's size, in SVG user units; it scales to the page's width.
const WIDTH: f64 = 1000.0;
const LABEL: f64 = 170.0;
const ROW: f64 = 24.0;
const AXIS: f64 = 22.0;
const BAR: f64 = 14.0;
/// A bar is never drawn thinner than this, so that an attempt of a
/// millisecond in a day-long history is still seen.
const MIN_BAR: f64 = 2.0;

fn x(layout: &Layout, at: i64) -> f64 {
    let span = (layout.end_ms - layout.start_ms).max(1) as f64;
    let ratio = ((at - layout.start_ms) as f64 / span).clamp(0.0, 1.0);
    LABEL + ratio * (WIDTH - LABEL - 8.0)
}

fn number(value: f64) -> String {
    format!("{value:.1}")
}

/// The layout as inline SVG, with a text description for screen readers
/// (the history table below it says the same in full).
pub fn svg(layout: &Layout) -> Markup {
    let height = AXIS + ROW * layout.lanes.len().max(1) as f64 + 6.0;
    let span = layout.end_ms - layout.start_ms;
    let attempts: usize =
        layout.lanes.iter().map(|l| l.bars.iter().filter(|b| matches!(b.kind, BarKind::Attempt { .. })).count()).sum();
    let description = format!(
        "{} lanes, {attempts} attempts over {}; the event history below lists every event.",
        layout.lanes.len(),
        format::duration(span)
    );
    let ticks: Vec<(f64, String)> = (0..=4)
        .map(|i| {
            let at = layout.start_ms + span * i / 4;
            (x(layout, at), format::offset(at - layout.start_ms))
        })
        .collect();
    html! {
        svg class="timeline" viewBox={ "0 0 " (number(WIDTH)) " " (number(height)) } role="img"
            aria-labelledby="timeline-title timeline-desc" preserveAspectRatio="xMinYMin meet" {
            title id="timeline-title" { "Timeline" }
            desc id="timeline-desc" { (description) }
            @for (i, (tick_x, text)) in ticks.iter().enumerate() {
                line class="tick" x1=(number(*tick_x)) x2=(number(*tick_x)) y1="14" y2=(number(height)) {}
                text class="tick-label" x=(number(*tick_x)) y="11"
                    text-anchor=(if i == 0 { "start" } else if i == 4 { "end" } else { "middle" }) { (text) }
            }
            @for (row, lane) in layout.lanes.iter().enumerate() {
                @let y = AXIS + ROW * row as f64;
                g class={ "lane" @if lane.compensation { " compensation" } } data-step=(lane.step) {
                    text class="lane-label" x="4" y=(number(y + BAR - 2.0)) { (format::short(&lane.label, 24)) }
                    @for bar in &lane.bars {
                        @let (x0, x1) = (x(layout, bar.from_ms), x(layout, bar.to_ms));
                        @let width = (x1 - x0).max(MIN_BAR);
                        @match bar.kind {
                            BarKind::Attempt { attempt } => {
                                g class={ "bar attempt " (bar.outcome.name()) } data-attempt=(attempt) data-outcome=(bar.outcome.name()) {
                                    title { (bar.title) }
                                    rect class="queued" x=(number(x0)) y=(number(y)) width=(number(width)) height=(number(BAR)) {}
                                    @if let Some(started) = bar.started_ms {
                                        @let xs = x(layout, started);
                                        rect class="ran" x=(number(xs)) y=(number(y)) width=(number((x0 + width - xs).max(MIN_BAR))) height=(number(BAR)) {}
                                    }
                                }
                            }
                            BarKind::Backoff => {
                                g class="bar backoff" data-outcome=(bar.outcome.name()) {
                                    title { (bar.title) }
                                    rect x=(number(x0)) y=(number(y + BAR / 2.0 - 2.0)) width=(number(width)) height="4" {}
                                }
                            }
                            BarKind::Timer | BarKind::Waiting => {
                                g class={ "bar " @if bar.kind == BarKind::Timer { "timer" } @else { "waiting" } } data-outcome=(bar.outcome.name()) {
                                    title { (bar.title) }
                                    rect x=(number(x0)) y=(number(y + 3.0)) width=(number(width)) height=(number(BAR - 6.0)) {}
                                }
                            }
                        }
                    }
                    @for mark in &lane.marks {
                        @let mx = x(layout, mark.at_ms);
                        g class={ "mark " (mark.kind.name()) } {
                            title { (mark.title) }
                            path d={ "M" (number(mx)) " " (number(y - 1.0)) " l5 8 l-5 8 l-5 -8 z" } {}
                        }
                    }
                }
            }
            @for mark in &layout.marks {
                @let mx = x(layout, mark.at_ms);
                g class={ "mark workflow " (mark.kind.name()) } {
                    title { (mark.title) }
                    line x1=(number(mx)) x2=(number(mx)) y1="14" y2=(number(height)) {}
                    circle cx=(number(mx)) cy="16" r="3.5" {}
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use sagaflow_proto::v1::{
        ActivityCompleted, ActivityFailed, ActivityScheduled, ActivityStarted, ActivityTimedOut, CompensationStarted,
        SignalReceived, StepEscalated, TimerFired, TimerStarted, WorkflowCompensated, WorkflowStarted,
    };

    use super::*;

    fn at(seq: u64, time_ms: i64, attributes: Attributes) -> HistoryEvent {
        HistoryEvent { seq, time_ms, attributes: Some(attributes) }
    }

    fn scheduled(task_id: &str, step: &str, attempt: u32, compensation: bool) -> Attributes {
        Attributes::ActivityScheduled(ActivityScheduled {
            task_id: task_id.into(),
            step: step.into(),
            attempt,
            compensation,
            activity_type: format!("bench.{step}"),
            ..Default::default()
        })
    }

    fn started(task_id: &str, started_ms: i64) -> Attributes {
        Attributes::ActivityStarted(ActivityStarted { task_id: task_id.into(), worker_id: "w1".into(), started_ms })
    }

    fn steps() -> Vec<StepInfo> {
        vec![
            StepInfo { name: "reserve".into(), signal: None },
            StepInfo { name: "approve".into(), signal: Some("approve".into()) },
            StepInfo { name: "capture".into(), signal: None },
        ]
    }

    /// Reserve fails once (retryable, 40 ms backoff), times out once, then
    /// completes; the approval's deadline timer is cut short by its signal;
    /// capture fails for good and reserve is undone.
    fn history() -> Vec<HistoryEvent> {
        let failed = Attributes::ActivityFailed(ActivityFailed {
            task_id: "0.f.1".into(),
            error_type: "Unavailable".into(),
            message: "try later".into(),
            retryable: true,
            next_attempt_ms: 1_050,
            ..Default::default()
        });
        let timed_out = Attributes::ActivityTimedOut(ActivityTimedOut {
            task_id: "0.f.2".into(),
            timeout_type: "START_TO_CLOSE".into(),
            next_attempt_ms: 1_300,
            worker_id: "w1".into(),
        });
        vec![
            at(1, 1_000, Attributes::WorkflowStarted(WorkflowStarted::default())),
            at(2, 1_000, scheduled("0.f.1", "reserve", 1, false)),
            at(3, 1_002, started("0.f.1", 1_002)),
            at(4, 1_010, failed),
            at(
                5,
                1_010,
                Attributes::TimerStarted(TimerStarted {
                    timer_id: "retry/0.f.2".into(),
                    fire_at_ms: 1_050,
                    purpose: "retry".into(),
                }),
            ),
            at(6, 1_050, Attributes::TimerFired(TimerFired { timer_id: "retry/0.f.2".into() })),
            at(7, 1_050, scheduled("0.f.2", "reserve", 2, false)),
            at(8, 1_051, started("0.f.2", 1_051)),
            at(9, 1_250, timed_out),
            at(10, 1_300, scheduled("0.f.3", "reserve", 3, false)),
            at(11, 1_301, started("0.f.3", 1_301)),
            at(
                12,
                1_320,
                Attributes::ActivityCompleted(ActivityCompleted { task_id: "0.f.3".into(), result: "{}".into() }),
            ),
            at(
                13,
                1_320,
                Attributes::TimerStarted(TimerStarted {
                    timer_id: "signal-timeout/1".into(),
                    fire_at_ms: 9_000,
                    purpose: "signal-timeout".into(),
                }),
            ),
            at(
                14,
                1_500,
                Attributes::SignalReceived(SignalReceived {
                    name: "approve".into(),
                    input: "{}".into(),
                    identity: "ada".into(),
                }),
            ),
            at(15, 1_500, scheduled("2.f.1", "capture", 1, false)),
            at(16, 1_510, started("2.f.1", 1_510)),
            at(
                17,
                1_520,
                Attributes::ActivityFailed(ActivityFailed {
                    task_id: "2.f.1".into(),
                    error_type: "Declined".into(),
                    ..Default::default()
                }),
            ),
            at(
                18,
                1_520,
                Attributes::StepEscalated(StepEscalated { step: "capture".into(), attempt: 1, alert: "Late".into() }),
            ),
            at(
                19,
                1_520,
                Attributes::CompensationStarted(CompensationStarted {
                    reason: "capture failed".into(),
                    steps: vec!["reserve".into()],
                }),
            ),
            at(20, 1_520, scheduled("0.c.1", "reserve", 1, true)),
            at(21, 1_530, started("0.c.1", 1_530)),
            at(
                22,
                1_540,
                Attributes::ActivityCompleted(ActivityCompleted { task_id: "0.c.1".into(), result: "{}".into() }),
            ),
            at(23, 1_540, Attributes::WorkflowCompensated(WorkflowCompensated { reason: "capture failed".into() })),
        ]
    }

    #[test]
    fn attempts_backoffs_timers_and_compensations_become_bars() {
        let steps = steps();
        let context = Context { steps: &steps, now_ms: 99_999, open: false, current_step: "" };
        let layout = layout(&history(), &context);
        assert_eq!((layout.start_ms, layout.end_ms), (1_000, 1_540));
        let labels: Vec<&str> = layout.lanes.iter().map(|l| l.label.as_str()).collect();
        assert_eq!(labels, ["reserve", "approve", "capture", "undo reserve"]);

        let reserve = &layout.lanes[0];
        let kinds: Vec<(BarKind, &str, i64, i64)> =
            reserve.bars.iter().map(|b| (b.kind, b.outcome.name(), b.from_ms, b.to_ms)).collect();
        assert_eq!(
            kinds,
            [
                (BarKind::Attempt { attempt: 1 }, "failed", 1_000, 1_010),
                (BarKind::Backoff, "done", 1_010, 1_050),
                (BarKind::Attempt { attempt: 2 }, "timed-out", 1_050, 1_250),
                (BarKind::Backoff, "done", 1_250, 1_300),
                (BarKind::Attempt { attempt: 3 }, "completed", 1_300, 1_320),
            ]
        );
        assert_eq!(reserve.bars[0].started_ms, Some(1_002));
        assert!(reserve.bars[0].title.contains("Unavailable: try later"), "{}", reserve.bars[0].title);
        assert!(reserve.bars[2].title.contains("START_TO_CLOSE"), "{}", reserve.bars[2].title);

        // The signal ends the wait before its deadline.
        let approve = &layout.lanes[1];
        assert_eq!(approve.bars.len(), 1);
        assert_eq!(
            (approve.bars[0].kind, approve.bars[0].to_ms, approve.bars[0].outcome.name()),
            (BarKind::Timer, 1_500, "done")
        );

        let capture = &layout.lanes[2];
        assert_eq!(capture.bars[0].outcome, Outcome::Failed { error: "Declined".into() });
        assert_eq!(capture.marks.iter().map(|m| m.kind).collect::<Vec<_>>(), [MarkKind::Escalation]);

        let undo = &layout.lanes[3];
        assert!(undo.compensation);
        assert_eq!(undo.bars[0].outcome, Outcome::Completed);

        let marks: Vec<MarkKind> = layout.marks.iter().map(|m| m.kind).collect();
        assert_eq!(marks, [MarkKind::Signal, MarkKind::CompensationStarted, MarkKind::Ended]);
    }

    #[test]
    fn what_is_under_way_runs_to_now_while_open_and_is_abandoned_once_closed() {
        let steps = steps();
        let events: Vec<HistoryEvent> = history().into_iter().take(8).collect();
        let open = Context { steps: &steps, now_ms: 2_000, open: true, current_step: "reserve" };
        let layout_open = layout(&events, &open);
        let last = layout_open.lanes[0].bars.last().cloned();
        assert_eq!(last.map(|b| (b.outcome, b.to_ms)), Some((Outcome::Running, 2_000)));
        assert_eq!(layout_open.end_ms, 2_000);

        let closed = Context { open: false, ..open };
        let layout_closed = layout(&events, &closed);
        assert_eq!(layout_closed.lanes[0].bars.last().map(|b| b.outcome.clone()), Some(Outcome::Abandoned));
    }

    #[test]
    fn a_workflow_parked_on_a_signal_without_deadline_shows_the_wait() {
        let steps = steps();
        let events: Vec<HistoryEvent> = history().into_iter().take(12).collect();
        let context = Context { steps: &steps, now_ms: 5_000, open: true, current_step: "approve" };
        let layout = layout(&events, &context);
        let approve = layout.lanes.iter().find(|l| l.step == "approve").expect("a lane for the wait");
        assert_eq!(approve.bars[0].kind, BarKind::Waiting);
        assert_eq!((approve.bars[0].from_ms, approve.bars[0].to_ms), (1_320, 5_000));
        assert!(approve.bars[0].title.contains("waiting for signal approve"));
    }

    #[test]
    fn the_drawing_has_a_bar_per_attempt_and_escapes_labels() {
        let steps = vec![StepInfo { name: "<b>reserve</b>".into(), signal: None }];
        let events = vec![
            at(1, 0, Attributes::WorkflowStarted(WorkflowStarted::default())),
            at(2, 0, scheduled("0.f.1", "<b>reserve</b>", 1, false)),
            at(3, 5, Attributes::ActivityCompleted(ActivityCompleted { task_id: "0.f.1".into(), result: "{}".into() })),
        ];
        let context = Context { steps: &steps, now_ms: 10, open: false, current_step: "" };
        let drawn = svg(&layout(&events, &context)).into_string();
        assert_eq!(drawn.matches("class=\"bar attempt completed\"").count(), 1, "{drawn}");
        assert!(!drawn.contains("<b>"), "{drawn}");
        assert!(drawn.contains("&lt;b&gt;reserve&lt;/b&gt;"), "{drawn}");
    }
}
