//! The admin API's recordings: list, download (as `application/x-asciicast`, streamed) and delete. Only names
//! of a recording's shape are served or removed ([`crate::recording::is_recording_name`]), so a request cannot
//! reach outside the recordings directory; a recording still being written is never deleted.

use std::path::{Path, PathBuf};

use serde::Serialize;
use warp::http::StatusCode;
use warp::reply::Reply;

use super::{Admin, error, json_reply};
use crate::recording::{self, is_recording_name};

/// The content type of a recording.
pub const CONTENT_TYPE: &str = "application/x-asciicast";

/// One recording in the list.
#[derive(Debug, Serialize)]
struct Listed {
    /// The file name.
    name: String,
    /// The session it recorded.
    session: String,
    /// When it began, Unix seconds (from the file's header; `null` when the header does not parse).
    started: Option<u64>,
    /// Its size in bytes.
    size: u64,
    /// Whether it is still being written.
    active: bool,
}

fn dir(admin: &Admin) -> Option<PathBuf> {
    admin.policy.borrow().recordings.dir.clone()
}

/// The timestamp of a recording's header line.
async fn started(path: &Path) -> Option<u64> {
    use tokio::io::{AsyncBufReadExt, AsyncReadExt};
    let file = tokio::fs::File::open(path).await.ok()?;
    let mut line = String::new();
    tokio::io::BufReader::new(file).take(64 << 10).read_line(&mut line).await.ok()?;
    let header: recording::asciicast::Header = serde_json::from_str(&line).ok()?;
    Some(header.timestamp)
}

/// `GET /admin/recordings`.
pub(super) async fn list(admin: &Admin) -> Box<dyn Reply> {
    let Some(dir) = dir(admin) else { return json_reply(&Vec::<Listed>::new(), StatusCode::OK) };
    let files = match recording::list(&dir).await {
        Ok(f) => f,
        Err(e) => return error(StatusCode::INTERNAL_SERVER_ERROR, &format!("recordings cannot be listed: {e}")),
    };
    let active = admin.terminals.active_recordings();
    let mut out = Vec::with_capacity(files.len());
    for f in files {
        // `<session>-<YYYYMMDDTHHMMSSZ>.cast`: the session is what comes before the last '-'.
        let stem = f.name.trim_end_matches(".cast");
        let session = stem.rsplit_once('-').map_or(stem, |(s, _)| s).to_owned();
        out.push(Listed {
            started: started(&dir.join(&f.name)).await,
            active: active.contains(&f.name),
            name: f.name,
            session,
            size: f.size,
        });
    }
    json_reply(&out, StatusCode::OK)
}

/// The path of recording `name`, if the name is a recording's and the directory is set.
fn path_of(admin: &Admin, name: &str) -> Result<PathBuf, Box<dyn Reply>> {
    if !is_recording_name(name) {
        return Err(error(StatusCode::BAD_REQUEST, "not a recording's name"));
    }
    dir(admin).map(|d| d.join(name)).ok_or_else(|| error(StatusCode::NOT_FOUND, "no recordings directory"))
}

/// `GET /admin/recordings/{name}`: the file, streamed.
pub(super) async fn download(admin: &Admin, name: &str) -> Box<dyn Reply> {
    let path = match path_of(admin, name) {
        Ok(p) => p,
        Err(r) => return r,
    };
    let file = match tokio::fs::File::open(&path).await {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return error(StatusCode::NOT_FOUND, "no such recording"),
        Err(e) => return error(StatusCode::INTERNAL_SERVER_ERROR, &format!("the recording cannot be read: {e}")),
    };
    let body = futures::stream::unfold(Some(file), |file| async move {
        use tokio::io::AsyncReadExt;
        let mut file = file?;
        let mut buf = vec![0u8; 64 << 10];
        match file.read(&mut buf).await {
            Ok(0) => None,
            Ok(n) => {
                buf.truncate(n);
                Some((Ok(bytes::Bytes::from(buf)), Some(file)))
            }
            Err(e) => Some((Err(e), None)),
        }
    });
    let reply = warp::reply::with_header(warp::reply::stream(body), "content-type", CONTENT_TYPE);
    Box::new(warp::reply::with_header(reply, "content-disposition", format!("attachment; filename=\"{name}\"")))
}

/// `DELETE /admin/recordings/{name}`.
pub(super) async fn delete(admin: &Admin, name: &str) -> Box<dyn Reply> {
    let path = match path_of(admin, name) {
        Ok(p) => p,
        Err(r) => return r,
    };
    if admin.terminals.active_recordings().contains(name) {
        return error(StatusCode::CONFLICT, "the recording is still being written");
    }
    match tokio::fs::remove_file(&path).await {
        Ok(()) => json_reply(&serde_json::json!({ "removed": name }), StatusCode::OK),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => error(StatusCode::NOT_FOUND, "no such recording"),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, &format!("the recording cannot be removed: {e}")),
    }
}
