//! Delegated delayed leave (MSC4140, as lk-jwt-service does it, `matrixrtc.md` §8.8): the
//! client schedules its own "leave" as a delayed event on its homeserver and hands the delay
//! id to us. While its participant is connected we restart the delay at 80 % of its
//! timeout; when the participant goes away we send the event at once, so crashed clients leave
//! calls. The roster tells the job when the identity arrives and leaves
//! ([`crate::rooms::Rooms::presence`]); nothing polls. One job per (room, identity); a new
//! delegation replaces the old one.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Deserialize;
use tokio::task::AbortHandle;
use tokio::time::{sleep_until, Instant};
use url::Url;

use crate::ids::{ParticipantIdentity, RoomName};
use crate::rooms::Presence;
use crate::AppState;

/// How long a job waits for its participant to connect the first time.
const CONNECT_WAIT: Duration = Duration::from_secs(60);
/// Longest pause between retries of a failed `send`.
const MAX_BACKOFF: Duration = Duration::from_secs(60);
/// How long a job keeps retrying `send` before giving up (the homeserver fires the event at
/// its own timeout anyway).
const SEND_GIVE_UP: Duration = Duration::from_secs(300);

/// One delegated delayed event.
#[derive(Debug, Clone)]
pub struct Job {
    /// LiveKit room name.
    pub room: RoomName,
    /// LiveKit participant identity.
    pub identity: ParticipantIdentity,
    /// The homeserver's delay id (`syd_…`).
    pub delay_id: String,
    /// The delay, ms.
    pub delay: Duration,
    /// The user's homeserver client-server API base URL.
    pub cs_api: Url,
}

/// Running jobs, by (room, identity).
#[derive(Debug, Default)]
pub struct Delegations {
    jobs: Mutex<HashMap<(RoomName, ParticipantIdentity), Running>>,
    next_id: AtomicU64,
}

#[derive(Debug)]
struct Running {
    /// Tells this job from the one that replaced it.
    id: u64,
    handle: AbortHandle,
}

impl Delegations {
    /// Starts `job`, replacing a job for the same participant.
    pub fn start(&self, state: Arc<AppState>, job: Job) {
        let key = (job.room.clone(), job.identity.clone());
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        // The job's own entry goes when it ends, unless a newer job took its place; the lock
        // is held until the entry is in, so a job cannot end before it.
        let mut jobs = self.lock();
        let handle = tokio::spawn({
            let key = key.clone();
            async move {
                run(&state, job).await;
                let mut jobs = state.matrixrtc.delegations.lock();
                if jobs.get(&key).is_some_and(|r| r.id == id) {
                    jobs.remove(&key);
                }
            }
        })
        .abort_handle();
        if let Some(old) = jobs.insert(key, Running { id, handle }) {
            old.handle.abort();
        }
    }

    /// Jobs not yet finished.
    pub fn active(&self) -> usize {
        self.lock().len()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<(RoomName, ParticipantIdentity), Running>> {
        // every change is one insert or remove: a poisoned map is still consistent
        self.jobs.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[derive(Deserialize)]
struct ClientWellKnown {
    #[serde(rename = "m.homeserver")]
    homeserver: BaseUrl,
}

#[derive(Deserialize)]
struct BaseUrl {
    base_url: String,
}

/// The client-server API of `server_name`: the configured override, else
/// `/.well-known/matrix/client`'s `m.homeserver.base_url`.
pub async fn cs_api_url(state: &AppState, server_name: &str) -> Option<Url> {
    if let Some(u) = state.settings.matrixrtc.homeserver_urls.get(server_name) {
        return Url::parse(u).ok();
    }
    let (host, port) = super::openid::split_server_name(server_name).ok()?;
    let authority = port.map_or(host.clone(), |p| format!("{host}:{p}"));
    let url = format!("https://{authority}/.well-known/matrix/client");
    let resp = state.matrixrtc.http.get(&url).send().await.ok()?;
    let wk: ClientWellKnown = resp.error_for_status().ok()?.json().await.ok()?;
    Url::parse(&wk.homeserver.base_url).ok()
}

/// What the homeserver said to a restart or send.
enum Outcome {
    Done,
    /// The delayed event no longer exists (sent, cancelled or expired): nothing left to do.
    Gone,
    /// Try again after this long.
    Retry(Duration),
}

async fn act(state: &AppState, job: &Job, action: &str) -> Outcome {
    let path = format!(
        "/_matrix/client/unstable/org.matrix.msc4140/delayed_events/{}/{action}",
        job.delay_id
    );
    let Ok(url) = job.cs_api.join(&path) else {
        return Outcome::Gone;
    };
    match state
        .matrixrtc
        .http
        .post(url)
        .json(&serde_json::json!({}))
        .send()
        .await
    {
        Ok(r) if r.status().is_success() => Outcome::Done,
        Ok(r) if r.status() == reqwest::StatusCode::NOT_FOUND => Outcome::Gone,
        Ok(r) => {
            let wait = r
                .headers()
                .get(reqwest::header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<u64>().ok())
                .map(Duration::from_secs)
                .unwrap_or(Duration::from_secs(1));
            tracing::info!(status = %r.status(), action, "delayed event request refused; retrying");
            Outcome::Retry(wait.min(MAX_BACKOFF))
        }
        Err(e) => {
            tracing::info!(error = %e, action, "delayed event request failed; retrying");
            Outcome::Retry(Duration::from_secs(1))
        }
    }
}

/// Restarts the delay (it is due); `false` when the delayed event is gone (the job ends).
async fn restart(state: &AppState, job: &Job, next: &mut Instant, every: Duration) -> bool {
    match act(state, job, "restart").await {
        Outcome::Done => *next = Instant::now() + every,
        Outcome::Gone => {
            tracing::info!(room = %job.room, identity = %job.identity, "delayed event gone; delegation ends");
            return false;
        }
        Outcome::Retry(wait) => *next = Instant::now() + wait,
    }
    true
}

async fn run(state: &AppState, job: Job) {
    let started = Instant::now();
    let restart_every = job.delay.mul_f32(0.8).max(Duration::from_millis(500));
    let mut next_restart = started + restart_every;
    let mut presence: Presence = state.rooms.presence(&job.room, &job.identity);
    tracing::info!(room = %job.room, identity = %job.identity, delay_ms = job.delay.as_millis() as u64, "delayed leave delegated");
    // Until the participant connects (at most CONNECT_WAIT), then while it stays, the delay
    // is kept from firing.
    loop {
        tokio::select! {
            _ = presence.arrived() => break,
            _ = sleep_until(started + CONNECT_WAIT) => {
                tracing::info!(room = %job.room, identity = %job.identity, "delegated participant never connected");
                return;
            }
            _ = sleep_until(next_restart) => {
                if !restart(state, &job, &mut next_restart, restart_every).await {
                    return;
                }
            }
        }
    }
    loop {
        tokio::select! {
            _ = presence.departed() => break,
            _ = sleep_until(next_restart) => {
                if !restart(state, &job, &mut next_restart, restart_every).await {
                    return;
                }
            }
        }
    }
    // The participant left: send the leave now.
    let mut backoff = Duration::from_secs(1);
    let deadline = Instant::now() + SEND_GIVE_UP;
    loop {
        match act(state, &job, "send").await {
            Outcome::Done | Outcome::Gone => {
                tracing::info!(room = %job.room, identity = %job.identity, "delayed leave sent");
                return;
            }
            Outcome::Retry(wait) => {
                if Instant::now() > deadline {
                    tracing::warn!(room = %job.room, identity = %job.identity, "gave up sending the delayed leave");
                    return;
                }
                tokio::time::sleep(wait.max(backoff)).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
    }
}
