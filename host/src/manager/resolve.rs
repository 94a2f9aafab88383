//! The resolver: one petgraph graph of a plugin set and every problem in it,
//! found before anything is activated.
//!
//! Nodes are plugins (one per namespace), edges run from a plugin to each
//! dependency it declares. [`resolve`] reports all problems at once, each
//! naming the plugins involved, and gives the activation order: a
//! topological order of the plugins that can be activated (dependencies
//! first). A plugin with a problem of its own, or whose dependency cannot be
//! activated, is left out; the rest are activated.

use crate::plugins::EventKind;
use crate::plugins::manifest::Manifest;
use petgraph::Direction;
use petgraph::graph::{DiGraph, NodeIndex};
use semver::Version;
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fmt;

/// One plugin as the resolver sees it.
#[derive(Debug, Clone)]
pub struct Candidate {
    /// Its validated manifest.
    pub manifest: Manifest,
    /// Where it comes from, for messages (a path, `bundled`, a registry).
    pub origin: String,
    /// Its unqualified tool names, when known (from `describe`).
    pub tools: Vec<String>,
    /// The events it observes, when known.
    pub events: Vec<EventKind>,
    /// Its seniority, when known: bundled plugins 0, installed ones their
    /// install order. Where plugins clash, the senior one keeps its place
    /// and the newcomer that caused the clash is left out; without ranks,
    /// every plugin involved is.
    pub rank: Option<u64>,
}

impl Candidate {
    /// A candidate known only by its manifest.
    pub fn from_manifest(manifest: Manifest, origin: impl Into<String>) -> Candidate {
        Candidate {
            manifest,
            origin: origin.into(),
            tools: Vec::new(),
            events: Vec::new(),
            rank: None,
        }
    }

    /// A loaded plugin, with the tools and events it described.
    pub fn of(plugin: &crate::plugins::LoadedPlugin, origin: impl Into<String>) -> Candidate {
        Candidate {
            manifest: plugin.manifest.clone(),
            origin: origin.into(),
            tools: plugin.tools.iter().map(|t| t.name.clone()).collect(),
            events: plugin.events.clone(),
            rank: None,
        }
    }

    fn label(&self) -> String {
        format!("{} {}", self.manifest.namespace, self.manifest.version)
    }
}

/// One problem in a plugin set. The JSON form (`kind` plus the fields) is
/// stable: new kinds may be added, existing fields are not renamed.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum Problem {
    /// A plugin could not be read, validated or loaded.
    InvalidPlugin {
        /// Its namespace, when its manifest could be read.
        plugin: Option<String>,
        /// Where it is.
        origin: String,
        /// What is wrong.
        error: String,
    },
    /// A dependency is not in the set at all.
    MissingDependency {
        /// The dependent plugin.
        plugin: String,
        /// The namespace it needs.
        dependency: String,
        /// The requirement it declared.
        requirement: String,
    },
    /// A dependency is present, but no version satisfies the requirement.
    UnsatisfiedRequirement {
        /// The dependent plugin.
        plugin: String,
        /// The namespace it needs.
        dependency: String,
        /// The requirement it declared.
        requirement: String,
        /// The versions that are present.
        available: Vec<String>,
    },
    /// Plugins depend on each other in a circle.
    Cycle {
        /// The cycle, in dependency order, starting and ending at the same plugin.
        plugins: Vec<String>,
    },
    /// Two or more plugins claim one namespace.
    NamespaceClash {
        /// The namespace.
        namespace: String,
        /// Where each claimant comes from.
        origins: Vec<String>,
    },
    /// Two plugins expose a tool with the same qualified name.
    DuplicateTool {
        /// The qualified name.
        tool: String,
        /// Where each comes from.
        origins: Vec<String>,
    },
    /// Plugins offer the same unqualified tool, or observe the same event,
    /// with equal priority: the order between them is the user's to settle.
    PriorityTie {
        /// `tool <name>` or `event <name>`.
        subject: String,
        /// The shared priority.
        priority: i32,
        /// The plugins involved.
        plugins: Vec<String>,
        /// The plugin that was there first and stays active, when the set
        /// says who that is.
        kept: Option<String>,
    },
    /// A plugin declared that it cannot run beside another.
    DeclaredConflict {
        /// The plugin that declared it.
        plugin: String,
        /// The other plugin.
        other: String,
        /// The declared requirement that the other's version matches.
        requirement: String,
        /// The other's version.
        version: String,
        /// The one of the two that was there first and stays active, when
        /// the set says who that is.
        kept: Option<String>,
    },
    /// Not activated because a dependency cannot be activated.
    DependencyFailed {
        /// The plugin left out.
        plugin: String,
        /// Its dependency that failed.
        dependency: String,
    },
}

impl Problem {
    /// The namespaces this problem keeps from being activated.
    pub fn blocks(&self) -> Vec<&str> {
        match self {
            Problem::InvalidPlugin { plugin, .. } => plugin.iter().map(String::as_str).collect(),
            Problem::DuplicateTool { .. } => Vec::new(),
            Problem::MissingDependency { plugin, .. }
            | Problem::UnsatisfiedRequirement { plugin, .. }
            | Problem::DependencyFailed { plugin, .. } => vec![plugin.as_str()],
            Problem::Cycle { plugins } => plugins.iter().map(String::as_str).collect(),
            Problem::PriorityTie { plugins, kept, .. } => plugins
                .iter()
                .map(String::as_str)
                .filter(|p| kept.as_deref() != Some(*p))
                .collect(),
            Problem::NamespaceClash { namespace, .. } => vec![namespace.as_str()],
            Problem::DeclaredConflict {
                plugin,
                other,
                kept,
                ..
            } => [plugin.as_str(), other.as_str()]
                .into_iter()
                .filter(|p| kept.as_deref() != Some(*p))
                .collect(),
        }
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Problem::InvalidPlugin {
                plugin: Some(p),
                origin,
                error,
            } => {
                write!(f, "invalid plugin `{p}` ({origin}): {error}")
            }
            Problem::InvalidPlugin {
                plugin: None,
                origin,
                error,
            } => {
                write!(f, "invalid plugin {origin}: {error}")
            }
            Problem::MissingDependency {
                plugin,
                dependency,
                requirement,
            } => write!(
                f,
                "missing dependency: `{plugin}` needs `{dependency}` {requirement}, which is not installed"
            ),
            Problem::UnsatisfiedRequirement {
                plugin,
                dependency,
                requirement,
                available,
            } => write!(
                f,
                "requirement not satisfied: `{plugin}` needs `{dependency}` {requirement}, but only {} is available",
                available.join(", ")
            ),
            Problem::Cycle { plugins } => write!(f, "dependency cycle: {}", plugins.join(" -> ")),
            Problem::NamespaceClash { namespace, origins } => write!(
                f,
                "namespace clash: `{namespace}` is claimed by {}",
                origins.join(" and ")
            ),
            Problem::DuplicateTool { tool, origins } => {
                write!(f, "duplicate tool `{tool}` in {}", origins.join(" and "))
            }
            Problem::PriorityTie {
                subject,
                priority,
                plugins,
                kept,
            } => {
                write!(
                    f,
                    "priority tie: {} all offer {subject} with priority {priority}; give one a different priority or disable one",
                    plugins
                        .iter()
                        .map(|p| format!("`{p}`"))
                        .collect::<Vec<_>>()
                        .join(", ")
                )?;
                kept_note(f, kept)
            }
            Problem::DeclaredConflict {
                plugin,
                other,
                requirement,
                version,
                kept,
            } => {
                write!(
                    f,
                    "declared conflict: `{plugin}` cannot run beside `{other}` {requirement} (installed: {version})"
                )?;
                kept_note(f, kept)
            }
            Problem::DependencyFailed { plugin, dependency } => write!(
                f,
                "not activated: `{plugin}` depends on `{dependency}`, which cannot be activated"
            ),
        }
    }
}

fn kept_note(f: &mut fmt::Formatter<'_>, kept: &Option<String>) -> fmt::Result {
    match kept {
        Some(k) => write!(f, " (`{k}` was there first and stays active)"),
        None => Ok(()),
    }
}

/// The plugin of `names` that was in the set first, if ranks say so
/// unambiguously.
fn senior<'a>(
    unique: &BTreeMap<&str, &Candidate>,
    names: impl IntoIterator<Item = &'a str>,
) -> Option<String> {
    let mut ranked: Vec<(u64, &str)> = Vec::new();
    for n in names {
        ranked.push((unique.get(n)?.rank?, n));
    }
    ranked.sort();
    match ranked.as_slice() {
        [(first, name), (second, _), ..] if first < second => Some(name.to_string()),
        _ => None,
    }
}

/// The outcome of resolving a set.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Resolution {
    /// Namespaces to activate, dependencies first.
    pub order: Vec<String>,
    /// Every problem found, sorted.
    pub problems: Vec<Problem>,
}

impl Resolution {
    /// Whether the whole set can be activated.
    pub fn is_consistent(&self) -> bool {
        self.problems.is_empty()
    }
}

/// The dependency graph of a set: one node per namespace.
struct Graph {
    graph: DiGraph<String, ()>,
    index: BTreeMap<String, NodeIndex>,
}

/// Resolves a plugin set: every problem, and the activation order of the
/// plugins that can be activated.
pub fn resolve(candidates: &[Candidate]) -> Resolution {
    let mut problems = BTreeSet::new();
    let mut by_namespace: BTreeMap<&str, Vec<&Candidate>> = BTreeMap::new();
    for c in candidates {
        by_namespace
            .entry(c.manifest.namespace.as_str())
            .or_default()
            .push(c);
    }

    let mut blocked: BTreeSet<String> = BTreeSet::new();
    let mut unique: BTreeMap<&str, &Candidate> = BTreeMap::new();
    for (namespace, claimants) in &by_namespace {
        if let [only] = claimants.as_slice() {
            unique.insert(namespace, only);
            continue;
        }
        problems.insert(Problem::NamespaceClash {
            namespace: namespace.to_string(),
            origins: claimants
                .iter()
                .map(|c| format!("{} ({})", c.label(), c.origin))
                .collect(),
        });
        let mut tools: BTreeMap<&str, Vec<String>> = BTreeMap::new();
        for c in claimants {
            for t in &c.tools {
                tools.entry(t).or_default().push(c.origin.clone());
            }
        }
        for (tool, origins) in tools.into_iter().filter(|(_, o)| o.len() > 1) {
            problems.insert(Problem::DuplicateTool {
                tool: format!("{namespace}.{tool}"),
                origins,
            });
        }
    }

    let mut g = Graph {
        graph: DiGraph::new(),
        index: BTreeMap::new(),
    };
    // Clashing namespaces get a node too, so their dependents see them fail.
    for namespace in by_namespace.keys() {
        let node = g.graph.add_node(namespace.to_string());
        g.index.insert(namespace.to_string(), node);
    }
    for (namespace, c) in &unique {
        for (dep, requirement) in &c.manifest.dependencies {
            let Some(claimants) = by_namespace.get(dep.as_str()) else {
                problems.insert(Problem::MissingDependency {
                    plugin: namespace.to_string(),
                    dependency: dep.to_string(),
                    requirement: requirement.to_string(),
                });
                continue;
            };
            let versions: Vec<&Version> = claimants.iter().map(|c| &c.manifest.version).collect();
            if !versions.iter().any(|v| requirement.matches(v)) {
                problems.insert(Problem::UnsatisfiedRequirement {
                    plugin: namespace.to_string(),
                    dependency: dep.to_string(),
                    requirement: requirement.to_string(),
                    available: versions.iter().map(|v| v.to_string()).collect(),
                });
                continue;
            }
            if let Some(&to) = g.index.get(dep.as_str()) {
                g.graph.add_edge(g.index[*namespace], to, ());
            }
        }
        for (other, requirement) in &c.manifest.conflicts {
            if let Some(o) = unique.get(other.as_str())
                && requirement.matches(&o.manifest.version)
            {
                problems.insert(Problem::DeclaredConflict {
                    plugin: namespace.to_string(),
                    other: other.to_string(),
                    requirement: requirement.to_string(),
                    version: o.manifest.version.to_string(),
                    kept: senior(&unique, [*namespace, other.as_str()]),
                });
            }
        }
    }

    // Same unqualified tool or same event at equal priority.
    let mut offers: BTreeMap<String, BTreeMap<i32, Vec<String>>> = BTreeMap::new();
    for (namespace, c) in &unique {
        let subjects = c
            .tools
            .iter()
            .map(|t| format!("tool `{t}`"))
            .chain(c.events.iter().map(|e| format!("event {}", event_name(*e))));
        for subject in subjects {
            offers
                .entry(subject)
                .or_default()
                .entry(c.manifest.priority)
                .or_default()
                .push(namespace.to_string());
        }
    }
    for (subject, by_priority) in offers {
        for (priority, plugins) in by_priority {
            if plugins.len() > 1 {
                let kept = senior(&unique, plugins.iter().map(String::as_str));
                problems.insert(Problem::PriorityTie {
                    subject: subject.clone(),
                    priority,
                    plugins,
                    kept,
                });
            }
        }
    }

    for cycle in g.cycles() {
        problems.insert(Problem::Cycle { plugins: cycle });
    }

    for p in &problems {
        blocked.extend(p.blocks().into_iter().map(str::to_string));
    }

    // A plugin whose dependency cannot be activated cannot be either.
    // Walking dependents breadth-first from each blocked plugin reports the
    // direct cause once per plugin.
    let mut queue: VecDeque<String> = blocked.iter().cloned().collect();
    while let Some(failed) = queue.pop_front() {
        let Some(&node) = g.index.get(&failed) else {
            continue;
        };
        for dependent in g.graph.neighbors_directed(node, Direction::Incoming) {
            let name = g.graph[dependent].clone();
            if blocked.insert(name.clone()) {
                problems.insert(Problem::DependencyFailed {
                    plugin: name.clone(),
                    dependency: failed.clone(),
                });
                queue.push_back(name);
            }
        }
    }

    let order = g.activation_order(&blocked);
    Resolution {
        order,
        problems: problems.into_iter().collect(),
    }
}

pub use crate::plugins::event_name;

impl Graph {
    /// Every dependency cycle, as a path that returns to its start.
    fn cycles(&self) -> Vec<Vec<String>> {
        let mut out = Vec::new();
        for scc in petgraph::algo::tarjan_scc(&self.graph) {
            let members: BTreeSet<NodeIndex> = scc.iter().copied().collect();
            let start = *scc
                .iter()
                .min_by_key(|n| &self.graph[**n])
                .expect("components are non-empty");
            let self_loop = self.graph.contains_edge(start, start);
            if scc.len() == 1 && !self_loop {
                continue;
            }
            out.push(self.cycle_through(start, &members));
        }
        out
    }

    /// The shortest cycle through `start` inside one strongly connected
    /// component, found breadth-first.
    fn cycle_through(&self, start: NodeIndex, members: &BTreeSet<NodeIndex>) -> Vec<String> {
        let mut parent: BTreeMap<NodeIndex, NodeIndex> = BTreeMap::new();
        let mut queue = VecDeque::from([start]);
        let mut end = start;
        'search: while let Some(node) = queue.pop_front() {
            let mut next: Vec<NodeIndex> = self.graph.neighbors(node).collect();
            next.sort_by_key(|n| &self.graph[*n]);
            for n in next {
                if n == start {
                    end = node;
                    break 'search;
                }
                if members.contains(&n) && !parent.contains_key(&n) {
                    parent.insert(n, node);
                    queue.push_back(n);
                }
            }
        }
        let mut path = vec![start];
        let mut cursor = end;
        let mut back = Vec::new();
        while cursor != start {
            back.push(cursor);
            cursor = parent[&cursor];
        }
        path.extend(back.into_iter().rev());
        path.push(start);
        path.into_iter().map(|n| self.graph[n].clone()).collect()
    }

    /// Dependencies first, ties broken by name, blocked plugins left out.
    fn activation_order(&self, blocked: &BTreeSet<String>) -> Vec<String> {
        // Kahn's algorithm over the activatable subgraph: deterministic, and
        // it never sees a cycle because cycle members are blocked.
        let mut pending: BTreeMap<NodeIndex, usize> = BTreeMap::new();
        for node in self.graph.node_indices() {
            if blocked.contains(&self.graph[node]) {
                continue;
            }
            let deps = self
                .graph
                .neighbors(node)
                .filter(|d| !blocked.contains(&self.graph[*d]))
                .count();
            pending.insert(node, deps);
        }
        let mut ready: BTreeSet<(String, NodeIndex)> = pending
            .iter()
            .filter(|(_, n)| **n == 0)
            .map(|(node, _)| (self.graph[*node].clone(), *node))
            .collect();
        let mut order = Vec::new();
        while let Some(first) = ready.pop_first() {
            let (name, node) = first;
            order.push(name);
            for dependent in self.graph.neighbors_directed(node, Direction::Incoming) {
                if let Some(count) = pending.get_mut(&dependent) {
                    *count -= 1;
                    if *count == 0 {
                        ready.insert((self.graph[dependent].clone(), dependent));
                    }
                }
            }
        }
        order
    }
}

/// The dependency graph in Graphviz DOT, drawn with petgraph: plugins that
/// cannot be activated and edges with problems are red, missing
/// dependencies are dashed boxes.
pub fn dot(candidates: &[Candidate], resolution: &Resolution) -> String {
    use petgraph::dot::{Config, Dot};
    let blocked: BTreeSet<&str> = resolution
        .problems
        .iter()
        .flat_map(|p| p.blocks())
        .collect();
    let mut graph: DiGraph<(String, bool, bool), (String, bool)> = DiGraph::new();
    let mut index: BTreeMap<String, NodeIndex> = BTreeMap::new();
    for c in candidates {
        let ns = c.manifest.namespace.to_string();
        let label = format!("{} {}", ns, c.manifest.version);
        let node = graph.add_node((label, blocked.contains(ns.as_str()), false));
        index.entry(ns).or_insert(node);
    }
    for c in candidates {
        let from = index[c.manifest.namespace.as_str()];
        for (dep, requirement) in &c.manifest.dependencies {
            let bad = resolution.problems.iter().any(|p| {
                matches!(p, Problem::MissingDependency { plugin, dependency, .. }
                    | Problem::UnsatisfiedRequirement { plugin, dependency, .. }
                    if plugin == c.manifest.namespace.as_str() && dependency == dep.as_str())
                    || matches!(p, Problem::Cycle { plugins } if plugins.windows(2).any(|w| w[0] == c.manifest.namespace.as_str() && w[1] == dep.as_str()))
            });
            let to = *index
                .entry(dep.to_string())
                .or_insert_with(|| graph.add_node((format!("{dep} (missing)"), true, true)));
            graph.add_edge(from, to, (requirement.to_string(), bad));
        }
    }
    let edge = |_: &DiGraph<_, _>, e: petgraph::graph::EdgeReference<'_, (String, bool)>| {
        let (req, bad) = e.weight();
        format!(
            "label={:?}{}",
            req,
            if *bad { " color=red fontcolor=red" } else { "" }
        )
    };
    let node = |_: &DiGraph<_, _>,
                (_, (label, bad, missing)): (NodeIndex, &(String, bool, bool))| {
        let mut attrs = format!("label={label:?}");
        if *bad {
            attrs.push_str(" color=red fontcolor=red");
        }
        if *missing {
            attrs.push_str(" style=dashed shape=box");
        }
        attrs
    };
    format!(
        "{:?}",
        Dot::with_attr_getters(
            &graph,
            &[Config::EdgeNoLabel, Config::NodeNoLabel],
            &edge,
            &node
        )
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plugin(ns: &str, version: &str, deps: &[(&str, &str)]) -> Candidate {
        let mut text = format!(
            "name = \"{ns}\"\nnamespace = \"{ns}\"\nversion = \"{version}\"\ncontract = \"0.1.0\"\ndescription = \"test\"\n[dependencies]\n"
        );
        for (d, r) in deps {
            text.push_str(&format!("{d} = \"{r}\"\n"));
        }
        let manifest = Manifest::parse(&text, &format!("{ns}/plugin.toml")).unwrap();
        Candidate::from_manifest(manifest, format!("{ns}/"))
    }

    fn with(mut c: Candidate, edit: impl FnOnce(&mut Candidate)) -> Candidate {
        edit(&mut c);
        c
    }

    #[test]
    fn a_consistent_set_activates_dependencies_first() {
        let r = resolve(&[
            plugin("app", "1.0.0", &[("lib", "^2"), ("util", "^1")]),
            plugin("lib", "2.3.0", &[("util", ">=1.1")]),
            plugin("util", "1.2.0", &[]),
        ]);
        assert!(r.is_consistent(), "{:?}", r.problems);
        assert_eq!(r.order, ["util", "lib", "app"]);
    }

    #[test]
    fn missing_and_unsatisfied_dependencies_name_the_requirement_and_versions() {
        let r = resolve(&[
            plugin("app", "1.0.0", &[("lib", "^2"), ("gone", "^1")]),
            plugin("lib", "1.4.0", &[]),
        ]);
        let text: Vec<String> = r.problems.iter().map(|p| p.to_string()).collect();
        assert!(
            text.iter()
                .any(|t| t.contains("`app` needs `gone` ^1, which is not installed")),
            "{text:?}"
        );
        assert!(
            text.iter()
                .any(|t| t.contains("`app` needs `lib` ^2, but only 1.4.0 is available")),
            "{text:?}"
        );
        assert_eq!(r.order, ["lib"]);
    }

    #[test]
    fn cycles_are_shown_as_paths() {
        let r = resolve(&[
            plugin("a", "1.0.0", &[("b", "*")]),
            plugin("b", "1.0.0", &[("c", "*")]),
            plugin("c", "1.0.0", &[("a", "*")]),
            plugin("d", "1.0.0", &[("a", "*")]),
            plugin("e", "1.0.0", &[]),
        ]);
        assert!(
            r.problems.contains(&Problem::Cycle {
                plugins: vec!["a".into(), "b".into(), "c".into(), "a".into()]
            }),
            "{:?}",
            r.problems
        );
        assert!(r.problems.contains(&Problem::DependencyFailed {
            plugin: "d".into(),
            dependency: "a".into()
        }));
        assert_eq!(r.order, ["e"]);
    }

    #[test]
    fn an_incompatible_diamond_is_reported() {
        let r = resolve(&[
            plugin("top", "1.0.0", &[("left", "*"), ("right", "*")]),
            plugin("left", "1.0.0", &[("base", "^1")]),
            plugin("right", "1.0.0", &[("base", "^2")]),
            plugin("base", "1.5.0", &[]),
        ]);
        assert!(r.problems.iter().any(
            |p| matches!(p, Problem::UnsatisfiedRequirement { plugin, .. } if plugin == "right")
        ));
        assert!(r.problems.contains(&Problem::DependencyFailed {
            plugin: "top".into(),
            dependency: "right".into()
        }));
        assert_eq!(r.order, ["base", "left"]);
    }

    #[test]
    fn a_hundred_deep_chain_resolves_in_order() {
        let mut set = vec![plugin("p0", "1.0.0", &[])];
        for i in 1..100 {
            set.push(plugin(
                &format!("p{i}"),
                "1.0.0",
                &[(&format!("p{}", i - 1), "^1")],
            ));
        }
        set.reverse();
        let r = resolve(&set);
        assert!(r.is_consistent());
        let expected: Vec<String> = (0..100).map(|i| format!("p{i}")).collect();
        assert_eq!(r.order, expected);
        // Break the bottom: all 99 above it are left out, each with its cause.
        set.retain(|c| c.manifest.namespace.as_str() != "p0");
        let r = resolve(&set);
        assert!(r.order.is_empty());
        assert_eq!(
            r.problems.len(),
            99,
            "one missing dependency, 98 failed dependents"
        );
    }

    #[test]
    fn namespace_clashes_and_duplicate_tools() {
        let a = with(plugin("notes", "1.0.0", &[]), |c| {
            c.tools = vec!["save".into()]
        });
        let b = with(plugin("notes", "2.0.0", &[]), |c| {
            c.tools = vec!["save".into()];
            c.origin = "other/".into();
        });
        let r = resolve(&[a, b, plugin("user", "1.0.0", &[("notes", "^2")])]);
        assert!(r.problems.iter().any(
            |p| matches!(p, Problem::NamespaceClash { namespace, .. } if namespace == "notes")
        ));
        assert!(
            r.problems
                .iter()
                .any(|p| matches!(p, Problem::DuplicateTool { tool, .. } if tool == "notes.save"))
        );
        assert!(r.problems.contains(&Problem::DependencyFailed {
            plugin: "user".into(),
            dependency: "notes".into()
        }));
        assert!(r.order.is_empty());
    }

    #[test]
    fn equal_priorities_on_one_tool_or_event_are_conflicts() {
        let a = with(plugin("web", "1.0.0", &[]), |c| {
            c.tools = vec!["search".into()];
            c.events = vec![EventKind::BeforePrompt];
        });
        let b = with(plugin("docs", "1.0.0", &[]), |c| {
            c.tools = vec!["search".into()]
        });
        let cc = with(plugin("guard", "1.0.0", &[]), |c| {
            c.events = vec![EventKind::BeforePrompt]
        });
        let r = resolve(&[a.clone(), b.clone(), cc.clone()]);
        let ties: Vec<_> = r
            .problems
            .iter()
            .filter(|p| matches!(p, Problem::PriorityTie { .. }))
            .collect();
        assert_eq!(ties.len(), 2, "{:?}", r.problems);
        // Different priorities settle it.
        let b = with(b, |c| c.manifest.priority = 10);
        let cc = with(cc, |c| c.manifest.priority = -1);
        let r = resolve(&[a, b, cc]);
        assert!(r.is_consistent(), "{:?}", r.problems);
    }

    #[test]
    fn declared_conflicts_block_both() {
        let a = with(plugin("a", "1.0.0", &[]), |c| {
            c.manifest.conflicts.insert(
                crate::plugins::manifest::Ident::parse("b").unwrap(),
                "<2".parse().unwrap(),
            );
        });
        let r = resolve(&[
            a.clone(),
            plugin("b", "1.5.0", &[]),
            plugin("c", "1.0.0", &[]),
        ]);
        assert!(
            r.problems
                .iter()
                .any(|p| matches!(p, Problem::DeclaredConflict { .. }))
        );
        assert_eq!(r.order, ["c"]);
        let r = resolve(&[a, plugin("b", "2.0.0", &[])]);
        assert!(r.is_consistent());
    }

    #[test]
    fn dot_marks_problems() {
        let set = [
            plugin("a", "1.0.0", &[("gone", "^1")]),
            plugin("b", "1.0.0", &[("a", "*")]),
        ];
        let r = resolve(&set);
        let dot = dot(&set, &r);
        assert!(dot.starts_with("digraph {"), "{dot}");
        assert!(
            dot.contains("gone (missing)") && dot.contains("style=dashed"),
            "{dot}"
        );
        assert!(dot.contains("color=red"), "{dot}");
    }

    proptest::proptest! {
        /// Any set either resolves into an order in which every plugin
        /// comes after its dependencies, or names at least one problem; and
        /// every plugin left out is named by a problem.
        #[test]
        fn random_sets_resolve_in_dependency_order_or_report_problems(
            plugins in proptest::collection::vec(
                (0u64..3, proptest::collection::vec((0usize..10, 0usize..4), 0..4)),
                1..10,
            )
        ) {
            let reqs = ["*", "^1", "^2", ">=1, <3"];
            let n = plugins.len();
            let set: Vec<Candidate> = plugins
                .iter()
                .enumerate()
                .map(|(i, (major, deps))| {
                    let deps: Vec<(String, &str)> = deps
                        .iter()
                        .map(|(d, r)| (d % (n + 1), reqs[*r]))
                        .filter(|(d, _)| *d != i)
                        .map(|(d, r)| (format!("p{d}"), r))
                        .collect::<BTreeMap<_, _>>()
                        .into_iter()
                        .collect();
                    let deps: Vec<(&str, &str)> = deps.iter().map(|(d, r)| (d.as_str(), *r)).collect();
                    plugin(&format!("p{i}"), &format!("{}.0.0", major + 1), &deps)
                })
                .collect();
            let r = resolve(&set);
            if r.problems.is_empty() {
                proptest::prop_assert_eq!(r.order.len(), set.len());
            }
            let position: BTreeMap<&str, usize> =
                r.order.iter().enumerate().map(|(i, ns)| (ns.as_str(), i)).collect();
            for c in &set {
                let ns = c.manifest.namespace.as_str();
                match position.get(ns) {
                    Some(&at) => {
                        for dep in c.manifest.dependencies.keys() {
                            let dep_at = position.get(dep.as_str());
                            proptest::prop_assert!(
                                dep_at.is_some_and(|d| *d < at),
                                "{} activated before its dependency {}", ns, dep
                            );
                        }
                    }
                    None => proptest::prop_assert!(
                        r.problems.iter().any(|p| p.blocks().contains(&ns)),
                        "{} left out without a problem naming it: {:?}", ns, r.problems
                    ),
                }
            }
        }
    }
}
