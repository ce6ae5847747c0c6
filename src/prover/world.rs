//! The facts a proof is relative to: the schema and the bundle's entity store.

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;

use cedar_policy_core::ast::{Eid, Entity, EntityType, EntityUID};
use cedar_policy_core::entities::{Dereference, Entities};
use cedar_policy_core::validator::{ValidatorEntityTypeKind, ValidatorSchema};

use super::encode::{Field, Ty};

pub(crate) struct World<'a> {
    pub(crate) schema: &'a ValidatorSchema,
    pub(crate) store: &'a Entities,
    fields: RefCell<HashMap<EntityType, Rc<[Field]>>>,
}

impl<'a> World<'a> {
    pub(crate) fn new(schema: &'a ValidatorSchema, store: &'a Entities) -> Self {
        World {
            schema,
            store,
            fields: RefCell::new(HashMap::new()),
        }
    }

    /// The declared attributes of an entity type (shared: encoding asks for them per access).
    pub(crate) fn entity_fields(&self, et: &EntityType) -> Rc<[Field]> {
        if let Some(f) = self.fields.borrow().get(et) {
            return Rc::clone(f);
        }
        let fields: Rc<[Field]> = self
            .schema
            .get_entity_type(et)
            .map(|t| {
                t.attributes()
                    .iter()
                    .map(|(name, at)| Field {
                        name: name.to_string(),
                        required: at.is_required,
                        ty: Ty::from_schema(&at.attr_type),
                    })
                    .collect()
            })
            .unwrap_or_default();
        self.fields.borrow_mut().insert(et.clone(), Rc::clone(&fields));
        fields
    }

    /// Whether an entity of type `from` may have an ancestor of type `to` (the schema's
    /// `memberOf`, transitively). Cedar accepts any such type as a direct parent.
    pub(crate) fn type_reachable(&self, from: &EntityType, to: &EntityType) -> bool {
        self.schema
            .get_entity_type(to)
            .is_some_and(|t| t.has_descendant_entity_type(from))
    }

    /// The members of an enumerated entity type (`None` for other types).
    pub(crate) fn enum_members(&self, et: &EntityType) -> Option<Vec<Eid>> {
        match &self.schema.get_entity_type(et)?.kind {
            ValidatorEntityTypeKind::Enum(members) => Some(members.iter().cloned().collect()),
            _ => None,
        }
    }

    /// `a in b` for actions, from the schema's action groups.
    pub(crate) fn action_in(&self, a: &EntityUID, b: &EntityUID) -> bool {
        a == b
            || self
                .schema
                .get_action_id(b)
                .is_some_and(|act| act.descendants().any(|d| d == a))
    }

    pub(crate) fn stored(&self, uid: &EntityUID) -> Option<&'a Entity> {
        match self.store.entity(uid) {
            Dereference::Data(e) => Some(e),
            _ => None,
        }
    }

    /// `a in b` for a stored entity `a` (a fact of the store).
    pub(crate) fn store_in(&self, a: &EntityUID, b: &EntityUID) -> bool {
        a == b || self.stored(a).is_some_and(|e| e.is_descendant_of(b))
    }
}
