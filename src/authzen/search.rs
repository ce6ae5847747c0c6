//! AuthZEN 1.0 search (`/access/v1/search/{subject,resource,action}`): the subjects, resources or
//! actions for which an evaluation with the other two parts would answer `true`.
//!
//! A search is evaluation, one candidate at a time, through the same decision path as
//! `/access/v1/evaluation` (a managed agent through its chain, ceiling and taint included), so its
//! answer is by construction what evaluating each result one by one would answer. Candidates:
//! the entities of the searched type in the snapshot's entity store (which holds the managed
//! agents, so a subject search of type `Agent` lists live agents), in id order; for an action
//! search, the schema's actions by name. Searching never raises an agent's taint: it asks what
//! may be done, it does nothing.
//!
//! Pagination: `page.limit` caps the results of one answer; `page.token` resumes after the last
//! candidate the previous page looked at. Candidates are sorted by id (or action name) and the
//! token holds that key, not a position: agents spawned or revoked between two pages neither
//! repeat nor skip a candidate that was there throughout. The token is opaque to callers: the
//! key, the limit, and a fingerprint of the search and the policy version, so a token is refused
//! (`invalid_page_token`) for another search or after a reload. A request without `page` is
//! answered in full, without `page`.

use std::sync::Arc;

use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use super::{action_uid, context_of, Parts};
use crate::authorize::{decide_with, parse_uid, EntityRef, Fields, Parts as CedarParts, RequestError};
use crate::error::ErrorCode;
use crate::snapshot::Snapshot;

/// What is searched.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Subject,
    Resource,
    Action,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::Subject => "subject",
            Kind::Resource => "resource",
            Kind::Action => "action",
        }
    }
}

/// A search's answer: the results (`{type, id}` or `{name}`), and the page when one was asked.
#[derive(Debug, Clone, PartialEq)]
pub struct Found {
    pub results: Vec<Value>,
    pub page: Option<Page>,
}

/// The response's `page`: `next_token` is empty on the last page.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Page {
    pub next_token: String,
    pub count: usize,
}

impl Found {
    /// The response body.
    pub fn body(&self) -> Value {
        match &self.page {
            None => json!({ "results": self.results }),
            Some(p) => json!({ "results": self.results, "page": p }),
        }
    }
}

/// Where a page starts and how many results it holds at most.
struct PageRequest {
    /// The key (id or action name) of the last candidate the previous page looked at.
    after: Option<String>,
    limit: Option<usize>,
    asked: bool,
}

/// Answers a search of `kind` against one snapshot.
pub fn search(snap: &Snapshot, kind: Kind, body: &Value, now: i64) -> Result<Found, RequestError> {
    let top = Fields::of(body, "")?;
    let parts = Parts::from_fields(&top, None)?;
    let fingerprint = fingerprint(snap, kind, body);
    let page = read_page(&top, &fingerprint)?;
    let bundle = &snap.bundle;
    let subject = require(&parts.subject, "subject")?;
    let (candidates, template): (Arc<Vec<Value>>, Template) = match kind {
        Kind::Subject => {
            let ty = subject.require_string("type")?;
            let resource = parse_uid(bundle, &require(&parts.resource, "resource")?)?;
            let action = action_uid(bundle, &require(&parts.action, "action")?)?;
            (entities_of(snap, ty), Template::Subject { resource, action })
        }
        Kind::Resource => {
            let principal = parse_uid(bundle, &subject)?;
            let resource = require(&parts.resource, "resource")?;
            let ty = resource.require_string("type")?;
            let action = action_uid(bundle, &require(&parts.action, "action")?)?;
            (entities_of(snap, ty), Template::Resource { principal, action })
        }
        Kind::Action => {
            let principal = parse_uid(bundle, &subject)?;
            let resource = parse_uid(bundle, &require(&parts.resource, "resource")?)?;
            let mut names: Vec<&String> = bundle
                .actions_by_name
                .iter()
                .filter_map(|(name, uid)| uid.as_ref().map(|_| name))
                .collect();
            names.sort();
            let candidates = names.into_iter().map(|n| json!({ "name": n })).collect();
            (Arc::new(candidates), Template::Action { principal, resource })
        }
    };
    let (context, context_field) = context_of(
        &parts,
        [
            parts.subject.as_ref(),
            parts.resource.as_ref(),
            parts.action.as_ref(),
        ],
    )?;

    let mut results = Vec::new();
    let mut next = None;
    // Candidates are sorted by key: resume at the first one after the previous page's last.
    let start = page
        .after
        .as_deref()
        .map_or(0, |after| candidates.partition_point(|c| key(c) <= after));
    for (i, candidate) in candidates.iter().enumerate().skip(start) {
        if page.limit.is_some_and(|l| results.len() >= l) {
            next = Some(i);
            break;
        }
        let Some(request) = template.request(snap, candidate, &context, &context_field) else {
            continue;
        };
        match decide_with(snap, request, now, false) {
            Ok(o) if o.decision.allow => results.push(candidate.clone()),
            Ok(_) => {}
            // The context is the request's, the same for every subject or resource: say so once
            // rather than answering that nothing matches. An action search's context may suit
            // some actions and not others: each unsuited action is simply not a result.
            Err(e) if kind != Kind::Action && e.code == ErrorCode::InvalidContext => return Err(e),
            Err(_) => {}
        }
    }
    let page = page.asked.then(|| Page {
        next_token: next
            .and_then(|i| candidates.get(i.checked_sub(1)?))
            .map_or_else(String::new, |last| token(key(last), page.limit, &fingerprint)),
        count: results.len(),
    });
    Ok(Found { results, page })
}

/// The part `key` of a search, which it needs.
fn require<'a>(part: &Option<Fields<'a>>, key: &str) -> Result<Fields<'a>, RequestError> {
    part.clone().ok_or_else(|| RequestError::missing(key))
}

/// The fixed parts of a search; a candidate completes them into one evaluation.
enum Template {
    Subject { resource: EntityRef, action: EntityRef },
    Resource { principal: EntityRef, action: EntityRef },
    Action { principal: EntityRef, resource: EntityRef },
}

impl Template {
    /// The evaluation of `candidate`; `None` when it names no entity or action deputy can build.
    fn request(&self, snap: &Snapshot, candidate: &Value, context: &Value, context_field: &str) -> Option<CedarParts> {
        let entity = |field: &str| {
            let ty = candidate["type"].as_str()?;
            let id = candidate["id"].as_str()?;
            crate::authorize::entity_ref(&snap.bundle, ty, id, field.to_owned()).ok()
        };
        let (principal, action, resource) = match self {
            Template::Subject { resource, action } => (entity("subject")?, action.clone(), resource.clone()),
            Template::Resource { principal, action } => (principal.clone(), action.clone(), entity("resource")?),
            Template::Action { principal, resource } => {
                let name = candidate["name"].as_str()?;
                let uid = snap.bundle.actions_by_name.get(name)?.clone()?;
                let action = EntityRef {
                    uid,
                    field: "action".to_owned(),
                };
                (principal.clone(), action, resource.clone())
            }
        };
        Some(CedarParts {
            principal,
            action,
            resource,
            context: Some(context.clone()),
            context_field: context_field.to_owned(),
        })
    }
}

/// The entities of type `ty` in the snapshot's store, as AuthZEN `{type, id}`, in id order;
/// kept in the snapshot's memo for the types the schema declares (no other type has entities),
/// and for the next snapshots with the same entity store.
fn entities_of(snap: &Snapshot, ty: &str) -> Arc<Vec<Value>> {
    if !snap.bundle.type_names.contains_key(ty) {
        return Arc::new(Vec::new());
    }
    snap.memo
        .get_or_insert_for_store(&format!("search\u{0}{ty}"), || list_entities(snap, ty))
}

fn list_entities(snap: &Snapshot, ty: &str) -> Vec<Value> {
    let mut ids: Vec<String> = snap
        .entities()
        .iter()
        .map(cedar_policy::Entity::uid)
        .filter(|uid| uid.type_name().to_string() == ty)
        .map(|uid| uid.id().unescaped().to_owned())
        .collect();
    ids.sort();
    ids.into_iter().map(|id| json!({ "type": ty, "id": id })).collect()
}

fn read_page(top: &Fields<'_>, fingerprint: &str) -> Result<PageRequest, RequestError> {
    let Some(page) = top.object("page")? else {
        return Ok(PageRequest {
            after: None,
            limit: None,
            asked: false,
        });
    };
    let limit = match page.i64("limit")? {
        None => None,
        Some(l) if l >= 1 => Some(usize::try_from(l).unwrap_or(usize::MAX)),
        Some(l) => {
            return Err(RequestError::new(
                ErrorCode::InvalidField,
                format!("field `page.limit` is {l}; it must be at least 1"),
            ))
        }
    };
    let (after, token_limit) = match page.string("token")? {
        None | Some("") => (None, None),
        Some(t) => {
            let (after, limit) = parse_token(t, fingerprint)?;
            (Some(after), limit)
        }
    };
    Ok(PageRequest {
        after,
        limit: limit.or(token_limit),
        asked: true,
    })
}

/// What candidates are sorted by: an entity's id, an action's name.
fn key(candidate: &Value) -> &str {
    candidate
        .get("id")
        .or_else(|| candidate.get("name"))
        .and_then(Value::as_str)
        .unwrap_or_default()
}

/// A page token: the key of the last candidate looked at (hex), the limit it was asked with
/// (0: none), and the search's fingerprint.
fn token(after: &str, limit: Option<usize>, fingerprint: &str) -> String {
    format!("{}.{}.{fingerprint}", hex::encode(after), limit.unwrap_or(0))
}

fn parse_token(t: &str, fingerprint: &str) -> Result<(String, Option<usize>), RequestError> {
    let bad = |why: &str| {
        RequestError::new(
            ErrorCode::InvalidPageToken,
            format!("field `page.token`: `{t}` {why}"),
        )
        .with_help(
            "send the `page.next_token` of the previous answer, with the same subject, action, \
             resource and context; after a policy reload, start again without a token",
        )
    };
    let mut it = t.splitn(3, '.');
    let (Some(after), Some(limit), Some(fp)) = (it.next(), it.next(), it.next()) else {
        return Err(bad("is not a page token deputy issued"));
    };
    let after = hex::decode(after).ok().and_then(|b| String::from_utf8(b).ok());
    let (Some(after), Ok(limit)) = (after, limit.parse::<usize>()) else {
        return Err(bad("is not a page token deputy issued"));
    };
    if fp != fingerprint {
        return Err(bad(
            "was issued for another search, or before the policies were reloaded",
        ));
    }
    Ok((after, (limit > 0).then_some(limit)))
}

/// What a page token is bound to: the kind of search, the request without its `page`, and the
/// policy version.
fn fingerprint(snap: &Snapshot, kind: Kind, body: &Value) -> String {
    let mut hasher = Sha256::new();
    hasher.update(kind.as_str());
    hasher.update([0]);
    hasher.update(&snap.bundle.version);
    hasher.update([0]);
    if let Value::Object(m) = body {
        for key in ["subject", "action", "resource", "context"] {
            hasher.update(key);
            hasher.update(m.get(key).map(Value::to_string).unwrap_or_default());
            hasher.update([0]);
        }
    }
    hex::encode(&hasher.finalize()[..8])
}
