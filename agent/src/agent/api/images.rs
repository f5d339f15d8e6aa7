//! The image routes: list, inspect, delete (refused with 409 while a service needs the
//! image) and import (the body, an OCI image layout tarball as `herd save` writes it, is
//! streamed to a file first, up to [`MAX_IMPORT`] bytes). The store work is in
//! `agent::images` and runs on blocking threads. A removal tells the supervisor which blobs
//! went, so the VM snapshots of a removed image go with it.
//!
//! The in-use check reads the supervisor's published snapshot, which is published before
//! any change is acknowledged; a service created with the image while its removal runs is
//! not seen, and its instances then fail to start (as after a local `herd image rm`).

use axum::Json;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use http_body_util::BodyExt as _;
use tokio::io::AsyncWriteExt as _;

use super::Backend;
use super::params::ImageRef;
use super::reject::Failure;
use crate::agent::images;
use crate::agent::supervisor::chain;
use crate::store::StoreError;

/// Largest archive `POST /v1/images/import` takes.
pub const MAX_IMPORT: u64 = 4 << 30;
/// Content-Types an archive may come as.
const ARCHIVE_TYPES: [&str; 2] = ["application/x-tar", "application/octet-stream"];

type Answer = Result<Response, Failure>;

/// A store error as an answer. `from_body`: the store read an uploaded archive, so what is
/// wrong with its content is the client's fault, not the agent's.
fn store_failure(e: StoreError, from_body: bool) -> Failure {
    let text = chain(&e);
    let (status, field) = match &e {
        StoreError::NotFound(_) => (StatusCode::NOT_FOUND, None),
        StoreError::BadReference(_) | StoreError::Ambiguous { .. } => {
            (StatusCode::BAD_REQUEST, Some("ref".to_owned()))
        }
        StoreError::Io { .. } | StoreError::NotAStore { .. } | StoreError::ArchiveRead(..) => {
            (StatusCode::INTERNAL_SERVER_ERROR, None)
        }
        _ if from_body => (StatusCode::BAD_REQUEST, None),
        _ => (StatusCode::INTERNAL_SERVER_ERROR, None),
    };
    Failure::new(status, text, field)
}

fn internal(what: &str, e: impl std::fmt::Display) -> Failure {
    Failure::new(
        StatusCode::INTERNAL_SERVER_ERROR,
        format!("{what}: {e}"),
        None,
    )
}

/// Runs store work on a blocking thread.
async fn blocking<T: Send + 'static>(
    from_body: bool,
    work: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
) -> Result<T, Failure> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| internal("the store task failed", e))?
        .map_err(|e| store_failure(e, from_body))
}

/// `GET /v1/images`.
pub async fn list(State(b): State<Backend>) -> Answer {
    let list = blocking(false, move || images::list(&b.home)).await?;
    Ok(Json(list).into_response())
}

/// `GET /v1/images/{ref}`.
pub async fn inspect(State(b): State<Backend>, ImageRef(reference): ImageRef) -> Answer {
    let details = blocking(false, move || images::inspect(&b.home, &reference)).await?;
    Ok(Json(details).into_response())
}

/// `DELETE /v1/images/{ref}`: refused while a service needs the image it would remove.
pub async fn remove(State(b): State<Backend>, ImageRef(reference): ImageRef) -> Answer {
    let (home, r) = (b.home.clone(), reference.clone());
    if let Some(digest) = blocking(false, move || images::digest_removed(&home, &r)).await? {
        let users = b.fleet.borrow().users_of(&digest);
        if !users.is_empty() {
            let error = format!(
                "image {reference:?} ({digest}) is in use by service {}; update or delete the \
                 service first",
                users.join(", ")
            );
            return Err(Failure::new(StatusCode::CONFLICT, error, None));
        }
    }
    let home = b.home.clone();
    let removal = blocking(false, move || images::remove(&home, &reference)).await?;
    // The deleted blobs include the manifests of the images that are gone: their snapshots go.
    if let Some(notices) = &b.notices {
        notices.blobs_removed(removal.deleted.clone());
    }
    Ok(Json(removal).into_response())
}

/// `POST /v1/images/import`: the images of the tarball in the body.
pub async fn import(State(b): State<Backend>, request: Request) -> Answer {
    check_archive_type(request.headers())?;
    let declared = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if declared.is_some_and(|n| n > MAX_IMPORT) {
        return Err(too_large());
    }
    let home = b.home.clone();
    let staged = tokio::task::spawn_blocking(move || images::staging_file(&home))
        .await
        .map_err(|e| internal("the store task failed", e))?
        .map_err(|e| internal("cannot create a file for the archive", e))?;
    let file = staged
        .reopen()
        .map_err(|e| internal("cannot open the archive's file", e))?;
    receive(request.into_body(), tokio::fs::File::from_std(file)).await?;
    // Errors name the file; the client knows it as its upload.
    let staged_name = staged.path().display().to_string();
    let imported = blocking(true, move || images::import(&b.home, staged.path()))
        .await
        .map_err(|mut f| {
            f.body.error = f.body.error.replace(&staged_name, "the uploaded archive");
            f
        })?;
    Ok(Json(imported).into_response())
}

fn check_archive_type(headers: &HeaderMap) -> Result<(), Failure> {
    let value = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok());
    let essence = value.map(|v| v.split(';').next().unwrap_or("").trim());
    if essence.is_some_and(|e| ARCHIVE_TYPES.iter().any(|t| e.eq_ignore_ascii_case(t))) {
        return Ok(());
    }
    let error = format!(
        "Content-Type is {}; an image archive must be {}",
        value.map_or("missing".to_owned(), |v| format!("{v:?}")),
        ARCHIVE_TYPES.join(" or ")
    );
    Err(Failure::new(
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        error,
        None,
    ))
}

fn too_large() -> Failure {
    Failure::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        format!("the archive is larger than {MAX_IMPORT} bytes"),
        None,
    )
}

/// Writes the body to `file`, at most [`MAX_IMPORT`] bytes (counted as it arrives).
async fn receive(mut body: Body, mut file: tokio::fs::File) -> Result<(), Failure> {
    let mut total: u64 = 0;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| {
            Failure::new(
                StatusCode::BAD_REQUEST,
                format!("cannot read the request body: {e}"),
                None,
            )
        })?;
        let Ok(data) = frame.into_data() else {
            continue;
        };
        total += data.len() as u64;
        if total > MAX_IMPORT {
            return Err(too_large());
        }
        file.write_all(&data)
            .await
            .map_err(|e| internal("cannot store the archive", e))?;
    }
    file.flush()
        .await
        .map_err(|e| internal("cannot store the archive", e))
}
