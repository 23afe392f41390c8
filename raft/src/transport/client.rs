//! Caller side of one request stream: write the frame, read the reply frame.

use bytes::Bytes;

use super::error::{conn_error, read_error, write_error};
use super::frame::{RequestHeader, ResponseHeader, RESPONSE_HEADER_LEN};
use super::{NodeId, TransportError};

/// Opens a request stream. An error here means the request was certainly not delivered.
pub(crate) async fn open(
    conn: &quinn::Connection,
    peer: NodeId,
) -> Result<(quinn::SendStream, quinn::RecvStream), TransportError> {
    conn.open_bi().await.map_err(|e| conn_error(peer, &e))
}

/// Writes `chunks` and finishes the stream. A peer that stops the stream early (it refused the
/// frame from its header) is not an error here: its reply says why.
pub(crate) async fn write_request(
    send: &mut quinn::SendStream,
    peer: NodeId,
    chunks: &mut [Bytes],
) -> Result<WriteOutcome, TransportError> {
    match send.write_all_chunks(chunks).await {
        Ok(()) => {
            // Only fails if the stream is already closed; the reply read reports that.
            let _ = send.finish();
            Ok(WriteOutcome::Complete)
        }
        Err(quinn::WriteError::Stopped(_)) => Ok(WriteOutcome::Refused),
        Err(e) => Err(write_error(peer, e)),
    }
}

/// Whether the whole request went out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum WriteOutcome {
    /// Every byte was written and the stream finished.
    Complete,
    /// The peer stopped reading before the end (it refused the frame; its reply follows).
    Refused,
}

/// Reads the reply to `request_id`. The reply's `len` is checked against `max_frame` first.
pub(crate) async fn read_response(
    recv: &mut quinn::RecvStream,
    peer: NodeId,
    request_id: u64,
    max_frame: usize,
) -> Result<(ResponseHeader, Bytes), TransportError> {
    let mut hdr = [0u8; RESPONSE_HEADER_LEN];
    match recv.read_exact(&mut hdr).await {
        Ok(()) => {}
        Err(quinn::ReadExactError::FinishedEarly(0)) => {
            return Err(TransportError::Unreachable {
                peer,
                reason: "the peer closed the request without answering (shutting down?)".into(),
            })
        }
        Err(e) => return Err(read_error(peer, e)),
    }
    let resp = ResponseHeader::decode(&hdr)
        .map_err(|e| TransportError::protocol(peer, format!("reply header: {e}")))?;
    if resp.header.request_id != request_id {
        return Err(TransportError::protocol(
            peer,
            format!("reply names request {} but we sent {request_id}", resp.header.request_id),
        ));
    }
    let len = resp.header.len as usize;
    if len > max_frame {
        let _ = recv.stop(quinn::VarInt::from_u32(0));
        return Err(TransportError::FrameTooLarge { len: len as u64, max: max_frame as u64 });
    }
    let mut body = vec![0u8; len];
    recv.read_exact(&mut body).await.map_err(|e| read_error(peer, e))?;
    Ok((resp, Bytes::from(body)))
}

/// Header bytes of a request, as a chunk for [`write_request`].
pub(crate) fn header_chunk(h: &RequestHeader) -> Bytes {
    Bytes::copy_from_slice(&h.encode())
}
