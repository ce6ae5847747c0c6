//! Reading a bundle directory into a validated [`Bundle`]. Synchronous and blocking: callers on
//! the async runtime run it under `spawn_blocking`.
//!
//! Every problem is collected before giving up, so `deputy validate` lists them all at once.

use crate::error::ProblemCode;
use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::str::FromStr;

use cedar_policy::{
    Entities, EntityUid, Policy, PolicyId, PolicySet, Schema, SchemaFragment, Template, ValidationMode, Validator,
};

use super::files::{digest, read_files, read_revision, SourceFile, ENTITIES_DIR, SCHEMA_DIR};
use super::problem::{BundleError, Problem};
use super::{Bundle, LoadOptions, PolicySource, TaintRole};
use crate::eval::PolicyIndex;

/// The annotation that names a policy; without it a policy is `policyN` in load order.
const ID_ANNOTATION: &str = "id";
/// The schema annotation that marks an action as a taint source or sink.
const TAINT_ANNOTATION: &str = "taint";

/// What deputy's agent model needs from a schema, written as a policy so that Cedar's own
/// strict validator says precisely what is missing or mistyped.
const AGENT_MODEL_PROBE: &str = r#"permit(principal is Agent, action == Action::"delegate", resource is Agent) when {
  principal.can_delegate == true && principal.ceiling >= 0 && principal.depth >= 0 &&
  context.depth >= 0 && context.ttl_seconds >= 0 && context.ceiling >= 0 &&
  context.taint >= 0 && context.task like "*"
};"#;

/// Loads and strictly validates the bundle at `dir`.
pub fn load(dir: &Path, opts: &LoadOptions) -> Result<Bundle, BundleError> {
    let mut problems = Vec::new();
    let fail = |problems: Vec<Problem>| BundleError {
        dir: dir.display().to_string(),
        problems,
    };
    if !dir.is_dir() {
        return Err(fail(vec![Problem::new(
            ProblemCode::BundleNotFound,
            format!(
                "bundle directory `{}` does not exist or is not a directory",
                dir.display()
            ),
        )
        .with_help(
            "pass --bundle DIR pointing at a directory with schema/, policies/ and entities/",
        )]));
    }

    let [schema_files, policy_files, entity_files, grant_files] = read_files(dir, &mut problems);
    if schema_files.is_empty() && problems.is_empty() {
        problems.push(
            Problem::new(
                ProblemCode::SchemaMissing,
                "the bundle has no schema: `schema/*.cedarschema` is empty",
            )
            .with_help("every bundle is validated strictly, so it needs a Cedar schema"),
        );
    }
    let revision = read_revision(dir);
    let version = digest(
        &[&schema_files, &policy_files, &entity_files, &grant_files],
        revision.as_deref(),
    );

    let schema = parse_schema(&schema_files, &mut problems);
    let (policies, sources) = parse_policies(&policy_files, &mut problems);

    let Some((schema, taint_roles)) = schema else {
        return Err(fail(problems));
    };
    if opts.require_agent_model {
        check_agent_model(&schema, &mut problems);
        if let Err(p) = super::agents::check_representable(&schema) {
            problems.push(p);
        }
    }
    let entities = parse_entities(&entity_files, &schema, &mut problems);
    let validated = if opts.validate {
        validate(&schema, &policies, &sources, &policy_files, &mut problems);
        true
    } else {
        false
    };
    let grants = entities
        .as_ref()
        .map(|e| check_grants(&grant_files, &schema, e, &mut problems))
        .unwrap_or_default();
    match entities {
        Some(entities) if problems.is_empty() => {
            let actions_by_name = actions_by_name(&schema);
            let type_names = type_names(&schema);
            let index = PolicyIndex::build(&policies, &entities);
            let entity_json: Vec<(&str, serde_json::Value)> = entity_files
                .iter()
                .map(|f| {
                    (
                        f.rel.as_str(),
                        serde_json::from_str(&f.text).unwrap_or(serde_json::Value::Null),
                    )
                })
                .collect();
            let entity_json: Vec<(&str, &serde_json::Value)> = entity_json.iter().map(|(f, v)| (*f, v)).collect();
            let agent_names = super::AgentNames::collect(&entity_json, &entities, &policies);
            let taint_in_context = taint_in_context(&schema);
            let taint_context_valid = taint_context_valid(&schema, &taint_in_context);
            let empty_context_valid = empty_context_valid(&schema);
            let scope_types = super::ScopeTypes::of(&schema);
            Ok(Bundle {
                schema,
                policies,
                index,
                entities,
                sources,
                type_names,
                actions_by_name,
                taint_in_context,
                taint_context_valid,
                empty_context_valid,
                scope_types,
                taint_roles,
                grants,
                agent_names,
                agent_model: opts.require_agent_model,
                version,
                revision,
                validated,
                loaded_at: crate::clock::now_rfc3339(),
                files: schema_files
                    .iter()
                    .chain(&policy_files)
                    .chain(&entity_files)
                    .chain(&grant_files)
                    .map(|f| f.rel.clone())
                    .collect(),
                partial: std::sync::OnceLock::new(),
                memo: Default::default(),
            })
        }
        _ => Err(fail(problems)),
    }
}

/// The deepest a `.cedarschema` file may nest braces and brackets (a namespace, an entity, its
/// record types, …), read from its tokens before Cedar parses it.
const MAX_SCHEMA_NESTING: usize = 64;

fn parse_schema(files: &[SourceFile], problems: &mut Vec<Problem>) -> Option<(Schema, HashMap<EntityUid, TaintRole>)> {
    let mut fragments = Vec::new();
    let mut ok = true;
    for file in files {
        let parsed = if file.rel.ends_with(".json") {
            SchemaFragment::from_json_str(&file.text).map_err(|e| {
                Problem::from_diagnostic(ProblemCode::SchemaInvalid, &e, Some(&file.rel), Some(&file.text))
            })
        } else if crate::prover::shape(&file.text).nesting > MAX_SCHEMA_NESTING {
            // INVARIANT: no schema text reaches Cedar's parser nested deep enough to overflow the
            // stack of the thread loading it (that aborted the sidecar on a reload).
            Err(vec![Problem::new(
                ProblemCode::SchemaInvalid,
                format!(
                    "the schema nests types more than {MAX_SCHEMA_NESTING} deep (deeper text could \
                     overflow the parser's stack)"
                ),
            )
            .in_file(&file.rel)])
        } else {
            SchemaFragment::from_cedarschema_str(&file.text)
                .map(|(fragment, _warnings)| fragment)
                .map_err(|e| {
                    Problem::from_diagnostic(ProblemCode::SchemaInvalid, &e, Some(&file.rel), Some(&file.text))
                })
        };
        match parsed {
            Ok(fragment) => fragments.push(fragment),
            Err(p) => {
                ok = false;
                problems.extend(p);
            }
        }
    }
    if !ok || files.is_empty() {
        return None;
    }
    let annotated = fragments.clone();
    match Schema::from_schema_fragments(fragments) {
        Ok(schema) => {
            let roles = taint_roles(&schema, &annotated, problems);
            Some((schema, roles))
        }
        Err(e) => {
            let file = (files.len() == 1)
                .then(|| files.first().map(|f| f.rel.as_str()))
                .flatten();
            problems.extend(Problem::from_diagnostic(
                ProblemCode::SchemaInvalid,
                &e,
                file.or(Some(SCHEMA_DIR)),
                None,
            ));
            None
        }
    }
}

/// Reads `@taint("source")` / `@taint("sink")` on action declarations.
fn taint_roles(
    schema: &Schema,
    fragments: &[SchemaFragment],
    problems: &mut Vec<Problem>,
) -> HashMap<EntityUid, TaintRole> {
    let mut roles = HashMap::new();
    for action in schema.actions() {
        let ty = action.type_name().to_string();
        let namespace = ty
            .rsplit_once("::")
            .and_then(|(ns, _)| cedar_policy::EntityNamespace::from_str(ns).ok());
        for fragment in fragments {
            let Some(value) = fragment.action_annotation(namespace.clone(), action.id(), TAINT_ANNOTATION) else {
                continue;
            };
            match value {
                "source" => {
                    roles.insert(action.clone(), TaintRole::Source);
                }
                "sink" => {
                    roles.insert(action.clone(), TaintRole::Sink);
                }
                other => problems.push(
                    Problem::new(
                        ProblemCode::SchemaInvalid,
                        format!(
                            "action `{action}` has @{TAINT_ANNOTATION}(\"{other}\"); expected \"source\" or \"sink\""
                        ),
                    )
                    .in_file(SCHEMA_DIR),
                ),
            }
        }
    }
    roles
}

fn check_agent_model(schema: &Schema, problems: &mut Vec<Problem>) {
    let probe = match Policy::parse(None, AGENT_MODEL_PROBE) {
        Ok(p) => p,
        Err(e) => {
            problems.push(Problem::new(
                ProblemCode::Internal,
                format!("agent model probe does not parse: {e}"),
            ));
            return;
        }
    };
    let mut set = PolicySet::new();
    if set.add(probe).is_err() {
        return;
    }
    let result = Validator::new(schema.clone()).validate(&set, ValidationMode::Strict);
    for err in result.validation_errors() {
        problems.push(
            Problem::new(
                ProblemCode::SchemaLacksAgentModel,
                format!(
                    "the schema does not declare what deputy's agent model needs: {}",
                    err.to_string()
                        .split_once(", ")
                        .map_or(err.to_string(), |(_, rest)| rest.to_owned())
                ),
            )
            .in_file(SCHEMA_DIR)
            .with_help(
                "declare `entity Agent { can_delegate: Bool, ceiling: Long, depth: Long }` and \
                 `action delegate appliesTo { principal: Agent, resource: Agent, context: { depth: Long, \
                 ttl_seconds: Long, ceiling: Long, taint: Long, task: String } }`; or serve with \
                 --authorize-only",
            ),
        );
    }
}

/// Parses every policy file, giving each policy its `@id` or the next `policyN`, and records
/// where each came from so validation errors can name the file and line.
fn parse_policies(files: &[SourceFile], problems: &mut Vec<Problem>) -> (PolicySet, HashMap<PolicyId, PolicySource>) {
    let mut set = PolicySet::new();
    let mut sources: HashMap<PolicyId, PolicySource> = HashMap::new();
    let mut counter = 0usize;
    for (file_index, file) in files.iter().enumerate() {
        // INVARIANT: no policy file reaches Cedar's parser nested or chained deep enough to
        // overflow the stack of the thread loading it (`prover::shape`): that aborted the whole
        // sidecar on a reload, instead of failing the reload and keeping the last good bundle.
        let shape = crate::prover::shape(&file.text);
        if shape.nesting > crate::prover::MAX_GRANT_NESTING || shape.operators > crate::prover::MAX_GRANT_OPERATORS {
            problems.push(
                Problem::new(
                    ProblemCode::PolicyParse,
                    format!(
                        "the file nests expressions {} deep and holds up to {} operators in one policy; \
                         at most {} and {} are accepted (deeper text could overflow the parser's stack)",
                        shape.nesting,
                        shape.operators,
                        crate::prover::MAX_GRANT_NESTING,
                        crate::prover::MAX_GRANT_OPERATORS
                    ),
                )
                .in_file(&file.rel),
            );
            continue;
        }
        let parsed = match PolicySet::from_str(&file.text) {
            Ok(parsed) => parsed,
            Err(e) => {
                problems.extend(Problem::from_diagnostic(
                    ProblemCode::PolicyParse,
                    &e,
                    Some(&file.rel),
                    Some(&file.text),
                ));
                continue;
            }
        };
        // The parser names policies `policy0..` in file order; restore that order.
        let mut items: BTreeMap<usize, Item> = BTreeMap::new();
        for p in parsed.policies() {
            items.insert(parser_index(p.id()), Item::Policy(p.clone()));
        }
        for t in parsed.templates() {
            items.insert(parser_index(t.id()), Item::Template(t.clone()));
        }
        // Lines are counted from the previous policy on, not from the file's start: a file of
        // 100k policies would otherwise be rescanned 100k times.
        let mut line_at = (0usize, 1usize);
        for item in items.into_values() {
            let id = match item.annotation(ID_ANNOTATION) {
                Some(id) => PolicyId::new(id),
                None => PolicyId::new(format!("policy{counter}")),
            };
            counter += 1;
            let offset = item.start();
            let line = match file.text.get(line_at.0..offset) {
                Some(between) if offset >= line_at.0 => line_at.1 + between.matches('\n').count(),
                _ => super::problem::line_col(&file.text, offset).0,
            };
            line_at = (offset, line);
            if let Some(prev) = sources.get(&id) {
                problems.push(
                    Problem::new(
                        ProblemCode::PolicyIdDuplicate,
                        format!("policy id `{id}` is already used at {}:{}", prev.file, prev.line),
                    )
                    .in_file(&file.rel)
                    .at(line, 1)
                    .with_help("give each policy a unique @id(\"...\") annotation"),
                );
                continue;
            }
            let added = match item {
                Item::Policy(p) => set.add(p.new_id(id.clone())).map_err(|e| e.to_string()),
                Item::Template(t) => set.add_template(t.new_id(id.clone())).map_err(|e| e.to_string()),
            };
            if let Err(e) = added {
                problems.push(
                    Problem::new(ProblemCode::PolicyInvalid, e)
                        .in_file(&file.rel)
                        .at(line, 1),
                );
                continue;
            }
            sources.insert(
                id,
                PolicySource {
                    file: file.rel.clone(),
                    file_index,
                    line,
                    offset,
                },
            );
        }
    }
    (set, sources)
}

enum Item {
    Policy(Policy),
    Template(Template),
}

impl Item {
    fn annotation(&self, key: &str) -> Option<String> {
        match self {
            Item::Policy(p) => p.annotation(key).map(str::to_owned),
            Item::Template(t) => t.annotation(key).map(str::to_owned),
        }
    }

    /// Where the policy starts in its file (its first annotation, or its effect), as the parser
    /// recorded it.
    fn start(&self) -> usize {
        let loc = match self {
            Item::Policy(p) => AsRef::<cedar_policy_core::ast::Policy>::as_ref(p).loc(),
            Item::Template(t) => AsRef::<cedar_policy_core::ast::Template>::as_ref(t).loc(),
        };
        loc.map_or(0, cedar_policy_core::parser::Loc::start)
    }
}

fn parser_index(id: &PolicyId) -> usize {
    id.to_string()
        .strip_prefix("policy")
        .and_then(|n| n.parse().ok())
        .unwrap_or(usize::MAX)
}

/// Parses all entity files as one store (Cedar adds the schema's action entities). When that
/// fails, each file is parsed alone to say which file is at fault.
fn parse_entities(files: &[SourceFile], schema: &Schema, problems: &mut Vec<Problem>) -> Option<Entities> {
    let mut all = Vec::new();
    let mut ok = true;
    for file in files {
        match serde_json::from_str::<serde_json::Value>(&file.text) {
            Ok(serde_json::Value::Array(items)) => all.extend(items),
            Ok(_) => {
                ok = false;
                problems.push(
                    Problem::new(ProblemCode::EntitiesInvalid, "expected a JSON array of entities")
                        .in_file(&file.rel)
                        .with_help(
                            "Cedar's entity format: [{\"uid\": {\"type\", \"id\"}, \"attrs\": {}, \"parents\": []}]",
                        ),
                );
            }
            Err(e) => {
                ok = false;
                problems.push(
                    Problem::new(ProblemCode::EntitiesJson, format!("not valid JSON: {e}"))
                        .in_file(&file.rel)
                        .at(e.line(), e.column().max(1)),
                );
            }
        }
    }
    if !ok {
        return None;
    }
    match Entities::from_json_value(serde_json::Value::Array(all), Some(schema)) {
        Ok(entities) => Some(entities),
        Err(combined) => {
            let before = problems.len();
            for file in files {
                let value = serde_json::from_str(&file.text).unwrap_or(serde_json::Value::Null);
                if let Err(e) = Entities::from_json_value(value, Some(schema)) {
                    problems.extend(Problem::from_diagnostic(
                        ProblemCode::EntitiesInvalid,
                        &e,
                        Some(&file.rel),
                        None,
                    ));
                }
            }
            if problems.len() == before {
                // Each file is fine alone: the files disagree (e.g. one entity in two files).
                problems.extend(Problem::from_diagnostic(
                    ProblemCode::EntitiesInvalid,
                    &combined,
                    Some(ENTITIES_DIR),
                    None,
                ));
            }
            None
        }
    }
}

fn validate(
    schema: &Schema,
    policies: &PolicySet,
    sources: &HashMap<PolicyId, PolicySource>,
    files: &[SourceFile],
    problems: &mut Vec<Problem>,
) {
    let result = Validator::new(schema.clone()).validate(policies, ValidationMode::Strict);
    for err in result.validation_errors() {
        let source = sources.get(err.policy_id());
        let mut p = Problem::new(ProblemCode::PolicyInvalid, err.to_string());
        if let Some(help) = miette::Diagnostic::help(err) {
            p = p.with_help(help.to_string());
        }
        if let Some(src) = source {
            p = p.in_file(&src.file);
            let text = files.get(src.file_index).map(|f| f.text.as_str()).unwrap_or("");
            let offset = miette::Diagnostic::labels(err)
                .and_then(|mut l| l.next())
                .map_or(src.offset, |l| l.offset());
            let (line, col) = super::problem::line_col(text, offset);
            p = p.at(line, col);
        }
        problems.push(p);
    }
}

/// Checks each shipped grant: it names an `Agent` the entity store declares, and it is a valid
/// grant (templates over `?principal`) under strict validation.
fn check_grants(
    files: &[SourceFile],
    schema: &Schema,
    entities: &Entities,
    problems: &mut Vec<Problem>,
) -> std::collections::BTreeMap<String, String> {
    let mut grants = std::collections::BTreeMap::new();
    for file in files {
        let Some(id) = Path::new(&file.rel)
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
        else {
            continue;
        };
        let declared = crate::agents::agent_uid(&id)
            .ok()
            .and_then(|uid| entities.get(&uid))
            .is_some();
        if !declared {
            problems.push(
                Problem::new(
                    ProblemCode::GrantInvalid,
                    format!(
                        "`{}` is a grant for `Agent::\"{id}\"`, which the entities do not declare",
                        file.rel
                    ),
                )
                .in_file(&file.rel)
                .with_help("name the file after an Agent entity in entities/*.json"),
            );
            continue;
        }
        let checked = crate::prover::Grant::parse(&file.text).and_then(|g| {
            g.check_holder_only()?;
            g.check_annotations()?;
            crate::prover::validate_grant(&g, schema)
        });
        match checked {
            Ok(()) => {
                grants.insert(id, file.text.clone());
            }
            Err(e) => {
                let code = match e {
                    crate::prover::GrantError::ForeignPrincipal(_) => ProblemCode::GrantForeignPrincipal,
                    _ => ProblemCode::GrantInvalid,
                };
                let mut p = Problem::new(code, e.to_string()).in_file(&file.rel);
                if let Some(help) = e.help() {
                    p = p.with_help(help);
                }
                problems.push(p)
            }
        }
    }
    grants
}

/// The actions whose context type declares a `taint` attribute, read from the schema once.
fn taint_in_context(schema: &Schema) -> std::collections::HashSet<EntityUid> {
    use cedar_policy_core::validator::types::Type;
    let core: &cedar_policy_core::validator::ValidatorSchema = schema.as_ref();
    schema
        .actions()
        .filter(|uid| {
            let core_uid: &cedar_policy_core::ast::EntityUID = (*uid).as_ref();
            matches!(core.context_type(core_uid), Some(Type::Record { attrs, .. })
                if attrs.get_attr(super::TAINT_FIELD).is_some())
        })
        .cloned()
        .collect()
}

/// The actions of `taint_in_context` whose context type accepts `{taint}` alone: Cedar's own
/// context check, made once per action (see `super::taint_context`).
fn taint_context_valid(
    schema: &Schema,
    actions: &std::collections::HashSet<EntityUid>,
) -> std::collections::HashSet<EntityUid> {
    use cedar_policy_core::ast::RequestSchema;
    let core: &cedar_policy_core::validator::ValidatorSchema = schema.as_ref();
    let context = super::taint_context(0);
    let extensions = cedar_policy_core::extensions::Extensions::all_available();
    actions
        .iter()
        .filter(|a| core.validate_context(&context, (*a).as_ref(), extensions).is_ok())
        .cloned()
        .collect()
}

/// The schema's actions whose context type accepts the empty record: Cedar's own context
/// check, made once per action. It depends on the action alone (the empty record holds nothing
/// else to check).
fn empty_context_valid(schema: &Schema) -> std::collections::HashSet<EntityUid> {
    use cedar_policy_core::ast::RequestSchema;
    let core: &cedar_policy_core::validator::ValidatorSchema = schema.as_ref();
    let context = cedar_policy_core::ast::Context::empty();
    let extensions = cedar_policy_core::extensions::Extensions::all_available();
    schema
        .actions()
        .filter(|a| core.validate_context(&context, (*a).as_ref(), extensions).is_ok())
        .cloned()
        .collect()
}

/// AuthZEN names actions by their id alone; map each id to its uid when it is unambiguous.
/// Every entity type and action type the schema declares, by its written name.
fn type_names(schema: &Schema) -> HashMap<String, cedar_policy::EntityTypeName> {
    let actions = schema.actions().map(|a| a.type_name());
    schema
        .entity_types()
        .chain(actions)
        .map(|t| (t.to_string(), t.clone()))
        .collect()
}

fn actions_by_name(schema: &Schema) -> HashMap<String, Option<EntityUid>> {
    let mut map: HashMap<String, Option<EntityUid>> = HashMap::new();
    for uid in schema.actions() {
        map.entry(uid.id().unescaped().to_owned())
            .and_modify(|slot| *slot = None)
            .or_insert_with(|| Some(uid.clone()));
    }
    map
}
