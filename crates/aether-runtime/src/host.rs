//! The per-instance host state kept in each wasmtime `Store`.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use wasmtime::ResourceLimiter;
use wasmtime::component::{Linker, ResourceTable};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};
use wasmtime_wasi_config::{WasiConfig, WasiConfigVariables};
use wasmtime_wasi_http::{
    Error as HttpError, RequestOptions, WasiBody, WasiHttpCtx, WasiHttpCtxView, WasiHttpHooks,
    WasiHttpView,
};

use crate::capabilities::OutboundPolicy;
use crate::keyvalue::{KeyValueCtx, KeyValueHost, KeyValueView};

/// Everything one instance can reach, owned by its `Store`.
pub(crate) struct HostState {
    pub(crate) table: ResourceTable,
    pub(crate) wasi: WasiCtx,
    pub(crate) http: WasiHttpCtx,
    pub(crate) hooks: OutboundHooks,
    pub(crate) limiter: MemoryLimiter,
    pub(crate) config: Arc<WasiConfigVariables>,
    pub(crate) keyvalue: KeyValueCtx,
}

impl WasiView for HostState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl WasiHttpView for HostState {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        WasiHttpCtxView {
            ctx: &mut self.http,
            table: &mut self.table,
            hooks: &mut self.hooks,
        }
    }
}

impl KeyValueHost for HostState {
    fn keyvalue_view(&mut self) -> KeyValueView<'_> {
        KeyValueView::new(&mut self.keyvalue, &mut self.table)
    }
}

/// Adds every interface the node provides to `linker`.
pub(crate) fn link(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    // The whole of WASI 0.2 (so `wasi:cli` components from common toolchains
    // link), with nothing granted: no preopens, no network, no inherited env.
    wasmtime_wasi::p2::add_to_linker_async(linker)?;
    wasmtime_wasi_http::p2::add_only_http_to_linker_async(linker)?;
    wasmtime_wasi_config::add_to_linker(linker, |h: &mut HostState| WasiConfig::from(&*h.config))?;
    // Linked for every component; `open` enforces `capabilities.keyvalue`.
    crate::keyvalue::link(linker)?;
    Ok(())
}

/// Interfaces that [`link`] provides; used to list every missing import of a
/// component at once instead of failing on the first. Entries without a
/// version match any version (the linker's semver rules decide); entries with
/// one (pre-release drafts, which semver never matches) match only it.
pub(crate) const PROVIDED_INTERFACES: &[&str] = &[
    "wasi:io/error",
    "wasi:io/poll",
    "wasi:io/streams",
    "wasi:clocks/monotonic-clock",
    "wasi:clocks/wall-clock",
    "wasi:clocks/timezone",
    "wasi:random/random",
    "wasi:random/insecure",
    "wasi:random/insecure-seed",
    "wasi:cli/environment",
    "wasi:cli/exit",
    "wasi:cli/stdin",
    "wasi:cli/stdout",
    "wasi:cli/stderr",
    "wasi:cli/terminal-input",
    "wasi:cli/terminal-output",
    "wasi:cli/terminal-stdin",
    "wasi:cli/terminal-stdout",
    "wasi:cli/terminal-stderr",
    "wasi:filesystem/types",
    "wasi:filesystem/preopens",
    "wasi:sockets/network",
    "wasi:sockets/instance-network",
    "wasi:sockets/udp",
    "wasi:sockets/udp-create-socket",
    "wasi:sockets/tcp",
    "wasi:sockets/tcp-create-socket",
    "wasi:sockets/ip-name-lookup",
    "wasi:http/types",
    "wasi:http/outgoing-handler",
    "wasi:config/store",
    "wasi:keyvalue/store@0.2.0-draft",
    "wasi:keyvalue/atomics@0.2.0-draft",
    "wasi:keyvalue/batch@0.2.0-draft",
];

/// Whether `import` (`ns:pkg/interface@version`) is in [`PROVIDED_INTERFACES`].
pub(crate) fn provides(import: &str) -> bool {
    let bare = import.split('@').next().unwrap_or(import);
    PROVIDED_INTERFACES.iter().any(|p| {
        if p.contains('@') {
            *p == import
        } else {
            *p == bare
        }
    })
}

/// Outbound HTTP gate: requests to hosts outside the component's allow-list
/// fail inside the guest with `HTTP-request-denied`.
pub(crate) struct OutboundHooks {
    pub(crate) policy: Arc<OutboundPolicy>,
    pub(crate) component: Arc<str>,
}

impl WasiHttpHooks for OutboundHooks {
    fn send_request(
        &mut self,
        request: http::Request<WasiBody>,
        options: Option<RequestOptions>,
        fut: Box<dyn Future<Output = Result<(), HttpError>> + Send>,
    ) -> Box<
        dyn Future<
                Output = wasmtime_wasi_http::Result<(
                    http::Response<WasiBody>,
                    Box<dyn Future<Output = Result<(), HttpError>> + Send>,
                )>,
            > + Send,
    > {
        let https = request.uri().scheme() == Some(&http::uri::Scheme::HTTPS);
        let authority = request
            .uri()
            .authority()
            .map(|a| a.as_str().to_string())
            .unwrap_or_default();
        if !self.policy.allows(&authority, https) {
            tracing::info!(
                component = %self.component,
                "outbound HTTP to `{authority}` denied: not in capabilities.outbound_http"
            );
            return Box::new(async { Err(HttpError::HttpRequestDenied) });
        }
        _ = fut;
        Box::new(async move {
            use http_body_util::BodyExt;
            let (res, io) = wasmtime_wasi_http::default_send_request(request, options).await?;
            Ok((
                res.map(BodyExt::boxed_unsync),
                Box::new(io) as Box<dyn Future<Output = Result<(), HttpError>> + Send>,
            ))
        })
    }
}

/// Caps each linear memory and table of an instance, and remembers whether
/// the cap was hit so the fault is reported as a memory limit, not a trap.
pub(crate) struct MemoryLimiter {
    pub(crate) max_memory: usize,
    pub(crate) max_table_elements: usize,
    pub(crate) exceeded: Arc<AtomicBool>,
}

impl ResourceLimiter for MemoryLimiter {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.max_memory {
            self.exceeded.store(true, Ordering::Relaxed);
            wasmtime::bail!(
                "memory limit exceeded: wanted {desired} bytes, limit is {} bytes",
                self.max_memory
            );
        }
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= self.max_table_elements)
    }
}

#[cfg(test)]
mod tests {
    use super::provides;

    #[test]
    fn drafts_match_only_their_own_version() {
        assert!(provides("wasi:http/types@0.2.6"));
        assert!(provides("wasi:keyvalue/store@0.2.0-draft"));
        assert!(!provides("wasi:keyvalue/store@0.2.0-draft2"));
        assert!(!provides("wasi:keyvalue/watcher@0.2.0-draft"));
        assert!(!provides("acme:missing/thing@1.0.0"));
    }
}
