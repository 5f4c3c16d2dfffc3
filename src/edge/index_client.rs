//! The worker's side of the index (`index.rs` is the Durable Object): typed calls, each
//! a request to the one object (`crate::core::index::ops` names them).

use core::cell::Cell;

use worker::{Env, Method, Request, RequestInit, Stub};

use crate::core::api;
use crate::core::index::ops::{read_answer, IndexOp, Op};
use crate::core::index::passes::IndexCalls;
use crate::core::index::{IndexError, BINDING, OBJECT_NAME};

pub struct IndexClient {
    stub: Stub,
    /// Requests made to the object (for the logs: what a request cost).
    calls: Cell<u32>,
}

impl IndexClient {
    pub fn open(env: &Env) -> Result<Self, IndexError> {
        let namespace = env
            .durable_object(BINDING)
            .map_err(|_| IndexError::Unbound)?;
        let stub = namespace
            .get_by_name(OBJECT_NAME)
            .map_err(|err| IndexError::Unavailable(err.to_string()))?;
        Ok(Self {
            stub,
            calls: Cell::new(0),
        })
    }

    /// Requests this client made to the object so far.
    pub fn calls(&self) -> u32 {
        self.calls.get()
    }

    /// Any operation, those the object runs itself included.
    pub async fn call_object<O: Op>(&self, request: &O::Request) -> Result<O::Answer, IndexError> {
        self.calls.set(self.calls.get() + 1);
        let unavailable = |err: worker::Error| IndexError::Unavailable(err.to_string());
        let mut init = RequestInit::new();
        init.with_method(Method::Post)
            .with_body(Some(api::render(request).into()));
        let request = Request::new_with_init(&format!("https://index/{}", O::NAME), &init)
            .map_err(unavailable)?;
        let mut response = self
            .stub
            .fetch_with_request(request)
            .await
            .map_err(unavailable)?;
        let body = response.bytes().await.map_err(unavailable)?;
        if response.status_code() != 200 {
            return Err(IndexError::Unavailable(format!(
                "{}: {}",
                O::NAME,
                String::from_utf8_lossy(&body).trim()
            )));
        }
        read_answer::<O>(&body)
    }
}

impl IndexCalls for IndexClient {
    async fn call<O: IndexOp>(&self, request: &O::Request) -> Result<O::Answer, IndexError> {
        self.call_object::<O>(request).await
    }

    fn cost(&self) -> u32 {
        1
    }
}
