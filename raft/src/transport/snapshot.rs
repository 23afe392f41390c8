//! Snapshot files on the wire: streamed from disk in chunks on a low-priority stream, received
//! into `snapshot_dir`, checked (length and SHA-256), then handed to the handler.
//!
//! After the request header and the opaque header come `file_len u64`, the file bytes and the
//! SHA-256 of the file. Neither side ever holds the file in memory.

use std::path::{Path, PathBuf};

use bytes::Bytes;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufWriter};

use super::client::{header_chunk, write_request, WriteOutcome};
use super::error::{read_error, write_error};
use super::frame::{RequestHeader, MAC_LEN};
use super::server::{Outcome, Shared};
use super::{NodeId, TransportError};

/// Size of the chunks read from disk and handed to QUIC.
const CHUNK: usize = 256 * 1024;
/// Priority of snapshot streams; request streams use quinn's default 0, and higher goes first.
pub(crate) const SNAPSHOT_PRIORITY: i32 = -10;

/// Streams `file` (already opened, `file_len` bytes) after the request header and `header`.
pub(crate) async fn send_file(
    send: &mut quinn::SendStream,
    peer: NodeId,
    req: &RequestHeader,
    header: Bytes,
    mut file: tokio::fs::File,
    path: &Path,
    file_len: u64,
) -> Result<WriteOutcome, TransportError> {
    let _ = send.set_priority(SNAPSHOT_PRIORITY);
    let mut prefix = [header_chunk(req), header, Bytes::copy_from_slice(&file_len.to_be_bytes())];
    if write_request_part(send, peer, &mut prefix).await? == WriteOutcome::Refused {
        return Ok(WriteOutcome::Refused);
    }
    let mut hasher = Sha256::new();
    let mut sent = 0u64;
    let mut buf = vec![0u8; CHUNK];
    let changed = |sent: u64| {
        TransportError::io(
            format!("sending snapshot {}", path.display()),
            std::io::Error::other(format!("file changed while sending: {sent} of {file_len} bytes")),
        )
    };
    while sent < file_len {
        let want = CHUNK.min((file_len - sent) as usize);
        let n = file
            .read(&mut buf[..want])
            .await
            .map_err(|e| TransportError::io(format!("reading snapshot {}", path.display()), e))?;
        if n == 0 {
            return Err(changed(sent));
        }
        hasher.update(&buf[..n]);
        match send.write_all(&buf[..n]).await {
            Ok(()) => {}
            Err(quinn::WriteError::Stopped(_)) => return Ok(WriteOutcome::Refused),
            Err(e) => return Err(write_error(peer, e)),
        }
        sent += n as u64;
    }
    let digest: [u8; MAC_LEN] = hasher.finalize().into();
    write_request(send, peer, &mut [Bytes::copy_from_slice(&digest)]).await
}

/// Like [`write_request`] without finishing the stream.
async fn write_request_part(
    send: &mut quinn::SendStream,
    peer: NodeId,
    chunks: &mut [Bytes],
) -> Result<WriteOutcome, TransportError> {
    match send.write_all_chunks(chunks).await {
        Ok(()) => Ok(WriteOutcome::Complete),
        Err(quinn::WriteError::Stopped(_)) => Ok(WriteOutcome::Refused),
        Err(e) => Err(write_error(peer, e)),
    }
}

/// Receives a snapshot whose request header was already read and checked (`req.len` is the opaque
/// header length, within `max_frame`), then calls the handler.
pub(crate) async fn receive(
    shared: &Shared,
    peer: NodeId,
    req: &RequestHeader,
    recv: &mut quinn::RecvStream,
) -> Outcome {
    let mut header = vec![0u8; req.len as usize];
    if let Err(e) = recv.read_exact(&mut header).await {
        return Outcome::Abort(read_error(peer, e).to_string());
    }
    let mut len = [0u8; 8];
    if let Err(e) = recv.read_exact(&mut len).await {
        return Outcome::Abort(read_error(peer, e).to_string());
    }
    let file_len = u64::from_be_bytes(len);
    let path = shared.snapshot_dir.join(format!(
        "incoming-g{}-from{}-{}.snap",
        req.group,
        peer,
        uuid::Uuid::new_v4().simple()
    ));
    match receive_file(recv, peer, &path, file_len).await {
        Ok(()) => {}
        Err(outcome) => {
            if let Err(e) = tokio::fs::remove_file(&path).await {
                if e.kind() != std::io::ErrorKind::NotFound {
                    tracing::warn!(path = %path.display(), error = %e, "cannot remove partial snapshot");
                }
            }
            return outcome;
        }
    }
    tracing::info!(peer, group = req.group, bytes = file_len, path = %path.display(), "snapshot received");
    // From here on the file belongs to the handler, which installs or deletes it.
    match shared.handler.handle_snapshot(peer, req.group, Bytes::from(header), path).await {
        Ok(reply) => Outcome::ok(reply),
        Err(msg) => Outcome::remote(msg),
    }
}

async fn receive_file(
    recv: &mut quinn::RecvStream,
    peer: NodeId,
    path: &PathBuf,
    file_len: u64,
) -> Result<(), Outcome> {
    let io_fail = |what: &str, e: std::io::Error| {
        tracing::error!(path = %path.display(), error = %e, "{what} incoming snapshot");
        Outcome::remote(format!("receiver cannot {what} snapshot file {}: {e}", path.display()))
    };
    let file = tokio::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
        .await
        .map_err(|e| io_fail("create", e))?;
    let mut out = BufWriter::with_capacity(1 << 20, file);
    let mut hasher = Sha256::new();
    let mut got = 0u64;
    while got < file_len {
        let want = CHUNK.min((file_len - got) as usize);
        let chunk = match recv.read_chunk(want, true).await {
            Ok(Some(c)) => c.bytes,
            Ok(None) => {
                return Err(Outcome::Abort(format!(
                    "snapshot stream from node {peer} ended after {got} of {file_len} bytes"
                )))
            }
            Err(e) => return Err(Outcome::Abort(format!("snapshot stream from node {peer}: {e}"))),
        };
        hasher.update(&chunk);
        out.write_all(&chunk).await.map_err(|e| io_fail("write", e))?;
        got += chunk.len() as u64;
    }
    let mut digest = [0u8; MAC_LEN];
    recv.read_exact(&mut digest).await.map_err(|e| Outcome::Abort(read_error(peer, e).to_string()))?;
    let ours: [u8; MAC_LEN] = hasher.finalize().into();
    if ours != digest {
        return Err(Outcome::bad_request(format!(
            "snapshot of {file_len} bytes arrived corrupt (SHA-256 mismatch); resend it"
        )));
    }
    out.flush().await.map_err(|e| io_fail("write", e))?;
    out.get_ref().sync_all().await.map_err(|e| io_fail("sync", e))?;
    Ok(())
}
