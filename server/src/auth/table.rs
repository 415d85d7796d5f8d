//! The route table: the API's router is built only through [`RouteTable::add`], which records each route's
//! method, path template and [`Access`] as it adds the handler, so the table and the router cannot disagree. The
//! auth middleware looks requests up in it by their matched path; tests walk it.

use std::collections::HashMap;

use axum::Router;
use axum::handler::Handler;
use axum::http::Method;
use axum::routing::{MethodFilter, on};

use super::{Access, Role};
use crate::api::AppState;

/// One route.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Route {
    /// The method.
    pub method: Method,
    /// The path template as axum matches it (`/api/blobs/{digest}`).
    pub path: &'static str,
    /// What it needs.
    pub access: Access,
}

/// A router and the table of the routes in it.
pub struct RouteTable {
    router: Router<AppState>,
    routes: Vec<Route>,
}

impl Default for RouteTable {
    fn default() -> Self {
        Self::new()
    }
}

impl RouteTable {
    /// No routes.
    pub fn new() -> Self {
        Self {
            router: Router::new(),
            routes: Vec::new(),
        }
    }

    /// Adds `handler` for `method` on `path`, needing `access`.
    pub fn add<H, T>(
        mut self,
        method: Method,
        path: &'static str,
        access: Access,
        handler: H,
    ) -> Self
    where
        H: Handler<T, AppState>,
        T: 'static,
    {
        assert!(
            !self
                .routes
                .iter()
                .any(|route| route.method == method && route.path == path),
            "{method} {path} added twice"
        );
        let filter = MethodFilter::try_from(method.clone()).expect("a standard method");
        self.router = self.router.route(path, on(filter, handler));
        self.routes.push(Route {
            method,
            path,
            access,
        });
        self
    }

    /// Transforms the router (layers), keeping the table.
    pub fn map(mut self, transform: impl FnOnce(Router<AppState>) -> Router<AppState>) -> Self {
        self.router = transform(self.router);
        self
    }

    /// Adds `other`'s routes, with their layers.
    pub fn merge(mut self, other: RouteTable) -> Self {
        for route in &other.routes {
            assert!(
                !self
                    .routes
                    .iter()
                    .any(|mine| mine.method == route.method && mine.path == route.path),
                "{} {} added twice",
                route.method,
                route.path
            );
        }
        self.router = self.router.merge(other.router);
        self.routes.extend(other.routes);
        self
    }

    /// The routes.
    pub fn routes(&self) -> &[Route] {
        &self.routes
    }

    /// The router and the lookup the middleware uses.
    pub fn into_parts(self) -> (Router<AppState>, AccessMap) {
        let map = self
            .routes
            .iter()
            .map(|route| ((route.method.clone(), route.path), route.access))
            .collect();
        (self.router, AccessMap(map))
    }
}

/// What each routed `(method, path template)` needs.
#[derive(Clone, Debug, Default)]
pub struct AccessMap(HashMap<(Method, &'static str), Access>);

impl AccessMap {
    /// What a request for `method` on the matched template `path` needs. `HEAD` on a route that only has `GET`
    /// is answered by the `GET` handler, so it needs what `GET` needs. Anything the table does not name (an
    /// unknown path, a method a path does not have) needs a key of any role: it is answered 404 or 405, but only
    /// to a client with a key (deny by default).
    pub fn lookup(&self, method: &Method, path: Option<&str>) -> Access {
        let Some(path) = path else {
            return Access::Needs(Role::Inference);
        };
        let find = |method: &Method| self.0.get(&(method.clone(), path)).copied();
        let found = find(method).or_else(|| {
            if *method == Method::HEAD {
                find(&Method::GET)
            } else {
                None
            }
        });
        found.unwrap_or(Access::Needs(Role::Inference))
    }
}
