//! Calls the server refused for now: a token over its rate, a pool's share used up, a decode
//! budget spent. The status says when the same request will be admitted; the call is made
//! again then, a few times. A refusal without that (a full disk, a missing scope) stands.

use std::future::Future;
use std::time::Duration;

use crate::error::Result;

/// Attempts after the first.
const RETRIES: u32 = 5;
/// The longest wait taken for one retry, whatever the server asked: past it the caller is
/// better told.
const MAX_WAIT: Duration = Duration::from_secs(5);
const MIN_WAIT: Duration = Duration::from_millis(20);

/// Runs `call` until it succeeds, fails for another reason, or has been refused for now
/// [`RETRIES`] more times.
pub async fn retrying<T, F, Fut>(call: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T>>,
{
    retrying_while(call, |retries, _| retries < RETRIES).await
}

/// Runs `call` until it succeeds, fails for another reason, or has been refused for now for
/// `patience`: for calls that wait their turn behind others of the same token (a history scan
/// of a fleet sharing one), which may take longer than a few retries.
pub async fn retrying_within<T, F, Fut>(patience: Duration, call: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T>>,
{
    let started = tokio::time::Instant::now();
    retrying_while(call, |_, _| started.elapsed() < patience).await
}

async fn retrying_while<T, F, Fut>(mut call: F, mut again: impl FnMut(u32, Duration) -> bool) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T>>,
{
    let mut retries = 0;
    loop {
        match call().await {
            Err(err) if err.retry_after().is_some_and(|asked| again(retries, asked)) => {
                let asked = err.retry_after().unwrap_or_default();
                tokio::time::sleep(asked.clamp(MIN_WAIT, MAX_WAIT)).await;
                retries += 1;
            }
            result => return result,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};

    use super::*;
    use crate::error::ClientError;

    fn busy() -> ClientError {
        ClientError::Status {
            code: tonic::Code::ResourceExhausted,
            message: "over the rate".into(),
            retry_after: Some(Duration::from_millis(1)),
        }
    }

    #[tokio::test]
    async fn a_call_refused_for_now_is_made_again_and_a_standing_refusal_is_not() {
        let calls = AtomicU32::new(0);
        let answer = retrying(|| async {
            let call = calls.fetch_add(1, Ordering::Relaxed);
            if call < 2 { Err(busy()) } else { Ok(call) }
        })
        .await;
        assert_eq!(answer.unwrap(), 2, "admitted on the third call");

        let calls = AtomicU32::new(0);
        let full = retrying(|| async {
            calls.fetch_add(1, Ordering::Relaxed);
            Err::<(), _>(ClientError::Status {
                code: tonic::Code::ResourceExhausted,
                message: "the disk is nearly full".into(),
                retry_after: None,
            })
        })
        .await;
        assert!(full.is_err());
        assert_eq!(calls.load(Ordering::Relaxed), 1, "a refusal that stands is not retried");

        let calls = AtomicU32::new(0);
        let busy_always = retrying(|| async {
            calls.fetch_add(1, Ordering::Relaxed);
            Err::<(), _>(busy())
        })
        .await;
        assert!(busy_always.is_err());
        assert_eq!(calls.load(Ordering::Relaxed), RETRIES + 1, "tried a few times, then told");
    }
}
