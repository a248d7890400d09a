//! `GET /console/export?format=csv|ndjson`: all of a citizen's own raw observations, every
//! metric, streamed a page of 10,000 rows at a time (CSV with `kenko query`'s columns, or
//! one JSON object a line as `GET /api/v1/observations?format=ndjson` writes them). The
//! export is written to the audit log as a read of identified data, with the rows sent.

use std::io::Write as _;

use axum::body::Body;
use axum::extract::{Query as QueryParams, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use kenko_devices::Metric;
use kenko_ingest::query::{render_csv_rows, Query, Resume, Row, CSV_HEADER};
use kenko_ingest::store::PersonalStore;
use serde::Deserialize;
use tokio::sync::mpsc;
use tracing::error;

use super::i18n::Lang;
use crate::http::{bad, ensure_sound_stores, forbidden, now_ms, ApiError, HttpApi};
use crate::observations::RowView;

/// Rows read from the store at a time.
const PAGE: usize = 10_000;

#[derive(Deserialize)]
pub(crate) struct ExportParams {
    /// `csv` (default) or `ndjson`.
    format: Option<String>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Shape {
    Csv,
    Ndjson,
}

pub(crate) async fn export(
    State(api): State<HttpApi>,
    headers: HeaderMap,
    params: Result<QueryParams<ExportParams>, axum::extract::rejection::QueryRejection>,
) -> Response {
    match start(&api, &headers, params) {
        Ok(response) => response,
        Err(e) => super::error_page(&headers, e),
    }
}

fn start(
    api: &HttpApi,
    headers: &HeaderMap,
    params: Result<QueryParams<ExportParams>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let viewer = match super::viewer(api, headers, Lang::of(headers)) {
        Ok(v) => v,
        Err(no) => return Ok(no.into_response()),
    };
    let QueryParams(params) = params.map_err(|e| bad(format!("query: {}", e.body_text())))?;
    let shape = match params.format.as_deref() {
        None | Some("csv") => Shape::Csv,
        Some("ndjson") => Shape::Ndjson,
        Some(other) => return Err(bad(format!("format {other:?}: csv or ndjson"))),
    };
    let citizen = match &viewer.who.citizen {
        Some(c) if viewer.has("citizen") => c.clone(),
        _ => {
            return Err(forbidden(
                "the export is a citizen's own data; sign in as their app",
            ))
        }
    };
    ensure_sound_stores(api)?;
    let (tx, rx) = mpsc::channel::<Result<Bytes, std::io::Error>>(4);
    let (store, registry) = (
        api.data_dir.join("personal.db"),
        api.data_dir.join("registry.db"),
    );
    let (who, owner) = (viewer.who.id.clone(), citizen.clone());
    tokio::task::spawn_blocking(move || {
        let sent = write_all(&store, &owner, shape, &tx);
        let rows = match sent {
            Ok(rows) => rows,
            Err(Stop::Store(e, rows)) => {
                error!(error = %e, "citizen export cut short by the store");
                let _ = tx.blocking_send(Err(std::io::Error::other("the store failed")));
                rows
            }
            Err(Stop::Gone(rows)) => rows,
        };
        let names: Vec<Metric> = Metric::ALL.to_vec();
        if let Err(e) =
            crate::observations::audit_read(&registry, &who, &names, &[&owner], rows, now_ms())
        {
            error!(error = %e.message(), "cannot audit a citizen export");
        }
    });
    let body = Body::from_stream(futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|chunk| (chunk, rx))
    }));
    let (kind, ext) = match shape {
        Shape::Csv => ("text/csv; charset=utf-8", "csv"),
        Shape::Ndjson => ("application/x-ndjson", "ndjson"),
    };
    let mut response = (StatusCode::OK, body).into_response();
    let h = response.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(kind));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    if let Ok(v) = HeaderValue::from_str(&format!("attachment; filename=\"kenko-{citizen}.{ext}\""))
    {
        h.insert(header::CONTENT_DISPOSITION, v);
    }
    Ok(response)
}

/// Why an export stopped early: the store failed, or the browser went away (rows sent).
enum Stop {
    Store(kenko_ingest::store::StoreError, usize),
    Gone(usize),
}

/// Sends every metric's rows of `citizen`, page by page; how many rows went out.
fn write_all(
    store: &std::path::Path,
    citizen: &str,
    shape: Shape,
    tx: &mpsc::Sender<Result<Bytes, std::io::Error>>,
) -> Result<usize, Stop> {
    let store = PersonalStore::open_read_only(store).map_err(|e| Stop::Store(e, 0))?;
    let mut sent = 0;
    if shape == Shape::Csv {
        send(tx, format!("{CSV_HEADER}\n").into_bytes(), sent)?;
    }
    for &metric in Metric::ALL {
        let mut resume: Option<Resume> = None;
        loop {
            let query = Query {
                citizen: Some(citizen.to_owned()),
                limit: Some(PAGE),
                resume: resume.take(),
                ..Query::new(metric)
            };
            let rows = store.query(&query).map_err(|e| Stop::Store(e, sent))?;
            let Some(last) = rows.last() else { break };
            resume = Some(Resume {
                time_ms: last.time_ms,
                citizen: last.citizen.clone(),
                device: last.device.clone(),
                inclusive: false,
            });
            send(tx, chunk(&rows, shape), sent)?;
            sent += rows.len();
            if rows.len() < PAGE {
                break;
            }
        }
    }
    Ok(sent)
}

fn send(
    tx: &mpsc::Sender<Result<Bytes, std::io::Error>>,
    bytes: Vec<u8>,
    sent: usize,
) -> Result<(), Stop> {
    tx.blocking_send(Ok(Bytes::from(bytes)))
        .map_err(|_| Stop::Gone(sent))
}

fn chunk(rows: &[Row], shape: Shape) -> Vec<u8> {
    let mut out = Vec::with_capacity(rows.len() * 96);
    match shape {
        Shape::Csv => {
            let _ = render_csv_rows(rows, &mut out);
        }
        Shape::Ndjson => {
            for r in rows {
                let _ = serde_json::to_writer(&mut out, &RowView::from(r.clone()));
                let _ = out.write_all(b"\n");
            }
        }
    }
    out
}
