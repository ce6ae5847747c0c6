//! Reading request JSON field by field, so every bad input is answered with the path of the
//! field at fault (`principal.type`, `evaluations[2].resource.id`), never a generic error.

use std::borrow::Cow;
use std::str::FromStr;

use cedar_policy::{Context, EntityId, EntityTypeName, EntityUid, RequestValidationError};
use serde::Deserialize;
use serde_json::{Map, Value};

use super::Parts;
use crate::bundle::Bundle;
use crate::error::ErrorCode;

/// A client error in a request: a stable code, a message naming the field, maybe a hint.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}: {message}", code.as_str())]
pub struct RequestError {
    /// The stable code (docs/ERRORS.md).
    pub code: ErrorCode,
    /// What is wrong, naming the field at fault.
    pub message: String,
    /// How to fix it, when deputy knows.
    pub help: Option<String>,
}

impl RequestError {
    /// An error with `code` and `message`.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: crate::error::bounded_message(message.into()),
            help: None,
        }
    }

    /// Adds how to fix it.
    pub fn with_help(mut self, help: impl Into<String>) -> Self {
        self.help = Some(help.into());
        self
    }

    /// `missing_field`: `field` is required.
    pub fn missing(field: &str) -> Self {
        Self::new(ErrorCode::MissingField, format!("missing required field `{field}`"))
    }

    /// `invalid_field`: `field` must be `expected`.
    pub fn wrong_type(field: &str, expected: &str) -> Self {
        Self::new(ErrorCode::InvalidField, format!("field `{field}` must be {expected}"))
    }

    pub(crate) fn from_validation(e: &RequestValidationError, principal: &str, action: &str, resource: &str) -> Self {
        let (code, field) = match e {
            RequestValidationError::UndeclaredAction(_) | RequestValidationError::ExternalAction(_) => {
                (ErrorCode::UnknownAction, action)
            }
            RequestValidationError::UndeclaredPrincipalType(_) => (ErrorCode::UnknownEntityType, principal),
            RequestValidationError::UndeclaredResourceType(_) => (ErrorCode::UnknownEntityType, resource),
            RequestValidationError::InvalidPrincipalType(_) => (ErrorCode::ActionNotApplicable, principal),
            RequestValidationError::InvalidResourceType(_) => (ErrorCode::ActionNotApplicable, resource),
            RequestValidationError::InvalidEnumEntity(_) => (ErrorCode::InvalidField, principal),
            _ => (ErrorCode::InvalidContext, "context"),
        };
        let mut err = Self::new(code, format!("`{field}`: {e}"));
        if let Some(help) = miette::Diagnostic::help(e) {
            err.help = Some(help.to_string());
        }
        err
    }
}

/// An entity reference read from a request, with the path of the field it came from.
#[derive(Debug, Clone)]
pub struct EntityRef {
    pub uid: EntityUid,
    pub field: String,
}

/// A JSON object being read, with its path for error messages.
#[derive(Clone)]
pub struct Fields<'a> {
    pub path: String,
    pub map: &'a Map<String, Value>,
}

impl<'a> Fields<'a> {
    /// Reads `value` (found at `path`) as an object.
    pub fn of(value: &'a Value, path: &str) -> Result<Self, RequestError> {
        match value {
            Value::Object(map) => Ok(Self {
                path: path.to_owned(),
                map,
            }),
            _ => Err(RequestError::wrong_type(path_or_body(path), "a JSON object")),
        }
    }

    pub fn field_path(&self, key: &str) -> String {
        if self.path.is_empty() {
            key.to_owned()
        } else {
            format!("{}.{key}", self.path)
        }
    }

    pub fn get(&self, key: &str) -> Option<&'a Value> {
        self.map.get(key).filter(|v| !v.is_null())
    }

    pub fn object(&self, key: &str) -> Result<Option<Fields<'a>>, RequestError> {
        self.get(key).map(|v| Fields::of(v, &self.field_path(key))).transpose()
    }

    pub fn require_object(&self, key: &str) -> Result<Fields<'a>, RequestError> {
        self.object(key)?
            .ok_or_else(|| RequestError::missing(&self.field_path(key)))
    }

    pub fn string(&self, key: &str) -> Result<Option<&'a str>, RequestError> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(_) => Err(RequestError::wrong_type(&self.field_path(key), "a string")),
        }
    }

    pub fn require_string(&self, key: &str) -> Result<&'a str, RequestError> {
        self.string(key)?
            .ok_or_else(|| RequestError::missing(&self.field_path(key)))
    }

    pub fn i64(&self, key: &str) -> Result<Option<i64>, RequestError> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v
                .as_i64()
                .map(Some)
                .ok_or_else(|| RequestError::wrong_type(&self.field_path(key), "an integer")),
        }
    }

    pub fn bool(&self, key: &str) -> Result<Option<bool>, RequestError> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(*b)),
            Some(_) => Err(RequestError::wrong_type(&self.field_path(key), "a boolean")),
        }
    }

    pub fn array(&self, key: &str) -> Result<Option<&'a Vec<Value>>, RequestError> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::Array(a)) => Ok(Some(a)),
            Some(_) => Err(RequestError::wrong_type(&self.field_path(key), "an array")),
        }
    }
}

fn path_or_body(path: &str) -> &str {
    if path.is_empty() {
        "(request body)"
    } else {
        path
    }
}

/// Parses a request body as JSON.
pub fn parse_json(bytes: &[u8]) -> Result<Value, RequestError> {
    serde_json::from_slice(bytes).map_err(|e| {
        RequestError::new(
            ErrorCode::MalformedJson,
            format!("the request body is not valid JSON: {e}"),
        )
    })
}

/// A well-formed Cedar-shaped body, read without building a `serde_json::Value` tree.
#[derive(Deserialize)]
struct WireRequest<'a> {
    #[serde(borrow)]
    principal: WireUid<'a>,
    #[serde(borrow)]
    action: WireUid<'a>,
    #[serde(borrow)]
    resource: WireUid<'a>,
    #[serde(default)]
    context: Option<Value>,
}

#[derive(Deserialize)]
struct WireUid<'a> {
    #[serde(borrow, rename = "type")]
    ty: Cow<'a, str>,
    #[serde(borrow)]
    id: Cow<'a, str>,
}

/// Reads a Cedar-shaped request body `{principal, action, resource, context}`. A body of the
/// expected shape is read straight into its parts; anything else (a missing or mistyped field,
/// a duplicate key, bad JSON) goes the field-by-field way of [`parts_of`], which accepts the
/// same bodies with the same meaning and names the field at fault.
pub fn read_parts(bundle: &Bundle, bytes: &[u8]) -> Result<Parts, RequestError> {
    let Ok(wire) = serde_json::from_slice::<WireRequest<'_>>(bytes) else {
        return parts_of(bundle, &parse_json(bytes)?, "");
    };
    Ok(Parts {
        principal: entity_ref(bundle, &wire.principal.ty, &wire.principal.id, "principal".to_owned())?,
        action: entity_ref(bundle, &wire.action.ty, &wire.action.id, "action".to_owned())?,
        resource: entity_ref(bundle, &wire.resource.ty, &wire.resource.id, "resource".to_owned())?,
        context: wire.context,
        context_field: "context".to_owned(),
    })
}

/// Reads the Cedar-shaped request `{principal, action, resource, context}` at `path` of a
/// parsed body.
pub fn parts_of(bundle: &Bundle, body: &Value, path: &str) -> Result<Parts, RequestError> {
    let f = Fields::of(body, path)?;
    Ok(Parts {
        principal: parse_uid(bundle, &f.require_object("principal")?)?,
        action: parse_uid(bundle, &f.require_object("action")?)?,
        resource: parse_uid(bundle, &f.require_object("resource")?)?,
        context: f.get("context").cloned(),
        context_field: f.field_path("context"),
    })
}

/// Reads `{type, id}` at `fields` into an entity uid.
pub fn parse_uid(bundle: &Bundle, fields: &Fields<'_>) -> Result<EntityRef, RequestError> {
    let ty = fields.require_string("type")?;
    let id = fields.require_string("id")?;
    entity_ref(bundle, ty, id, fields.path.clone())
}

/// The entity `ty::"id"` read from the object at `field`. Type names the bundle's schema
/// declares are taken from `bundle.type_names` (parsed once, at load); others go through
/// Cedar's parser.
pub fn entity_ref(bundle: &Bundle, ty: &str, id: &str, field: String) -> Result<EntityRef, RequestError> {
    let type_name = match bundle.type_names.get(ty) {
        Some(t) => t.clone(),
        None => EntityTypeName::from_str(ty).map_err(|e| {
            let at = if field.is_empty() {
                "type".to_owned()
            } else {
                format!("{field}.type")
            };
            RequestError::new(
                ErrorCode::InvalidField,
                format!("field `{at}` is not a Cedar entity type name: `{ty}`: {e}"),
            )
        })?,
    };
    Ok(EntityRef {
        uid: EntityUid::from_type_name_and_id(type_name, EntityId::new(id)),
        field,
    })
}

/// Parses a request context with the schema's context type for `action`.
pub fn parse_context(
    bundle: &Bundle,
    action: &EntityUid,
    context: Option<Value>,
    field: &str,
) -> Result<Context, RequestError> {
    let value = match context {
        // No context: skip the JSON parser; `Request::new` still checks it against the schema.
        None | Some(Value::Null) => return Ok(Context::empty()),
        Some(Value::Object(m)) if m.is_empty() => return Ok(Context::empty()),
        Some(v @ Value::Object(_)) => v,
        Some(_) => return Err(RequestError::wrong_type(field, "a JSON object")),
    };
    Context::from_json_value(value, Some((&bundle.schema, action))).map_err(|e| {
        let mut err = match e {
            cedar_policy::ContextJsonError::MissingAction(_) => RequestError::new(
                ErrorCode::UnknownAction,
                format!("action `{action}` is not declared in the schema"),
            ),
            _ => RequestError::new(ErrorCode::InvalidContext, format!("`{field}`: {e}")),
        };
        if let Some(help) = miette::Diagnostic::help(&e) {
            err.help = Some(help.to_string());
        }
        err
    })
}
