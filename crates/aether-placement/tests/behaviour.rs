//! Worked examples: spread, stacking, memory order, reports and their wording, explain, errors.

mod common;

use std::collections::BTreeMap;

use aether_placement::{
    Constraint, Deployment, Eligibility, PlacementError, explain, place, unmet_constraint,
};
use common::*;

fn regions_of(
    p: &aether_placement::Placement,
    members: &[aether_placement::Member],
    name: &str,
) -> BTreeMap<String, u32> {
    let mut by_region = BTreeMap::new();
    for (id, count) in &p.assignments[name] {
        let m = members.iter().find(|m| m.id == *id).unwrap();
        *by_region.entry(m.region.clone()).or_default() += count;
    }
    by_region
}

fn nine_members() -> Vec<aether_placement::Member> {
    let regions = ["eu-west", "us-east", "ap-southeast"];
    (0..9)
        .map(|i| member(i, regions[i as usize / 3], 4 * GIB))
        .collect()
}

#[test]
fn spread_goes_round_robin_over_regions() {
    let members = nine_members();
    for (desired, want) in [(3, [1, 1, 1]), (5, [2, 2, 1]), (7, [3, 2, 2])] {
        let mut d = deployment("web", desired);
        d.intent.spread = true;
        let p = place(&[d], &members).unwrap();
        let mut counts: Vec<u32> = regions_of(&p, &members, "web").into_values().collect();
        counts.sort_unstable_by(|a, b| b.cmp(a));
        assert_eq!(counts, want, "{desired} replicas");
        assert!(p.reports.is_empty());
    }
}

#[test]
fn one_replica_per_member_then_stacking() {
    let members = vec![member(1, "eu-west", GIB), member(2, "eu-west", GIB)];
    let p = place(&[deployment("api", 5)], &members).unwrap();
    let mut counts: Vec<u32> = p.assignments["api"].iter().map(|(_, c)| *c).collect();
    counts.sort_unstable();
    assert_eq!(counts, [2, 3]);
    assert!(p.reports.is_empty());
    // Scaled to zero: an empty assignment, no report.
    let p = place(&[deployment("idle", 0)], &members).unwrap();
    assert!(p.assignments["idle"].is_empty() && p.reports.is_empty());
}

#[test]
fn memory_is_accounted_in_name_order() {
    // One member with room for two replicas of 512 MiB.
    let members = vec![member(1, "eu-west", GIB)];
    let mut a = deployment("alpha", 1);
    let mut b = deployment("beta", 2);
    a.memory_per_replica = 512 * MIB;
    b.memory_per_replica = 512 * MIB;
    let p = place(&[b, a], &members).unwrap();
    assert_eq!(p.instances("alpha"), 1);
    assert_eq!(p.instances("beta"), 1);
    assert_eq!(p.reports.len(), 1);
    let r = &p.reports[0];
    assert_eq!(
        (r.deployment.as_str(), r.constraint),
        ("beta", Constraint::Memory)
    );
    assert_eq!(
        r.to_string(),
        "beta: memory: wanted 2 replicas of 512 MiB, placed 1: only 1 of the 1 eligible nodes \
         have 512 MiB free after the deployments before it by name"
    );
}

#[test]
fn reports_say_which_constraint_and_by_how_much() {
    let mut members: Vec<_> = (0..3).map(|i| member(i, "eu-west", 128 * MIB)).collect();
    members.push(member(3, "eu-west", 64 * MIB));
    members.push(member(4, "us-east", 4 * GIB));
    members[4].labels.insert("gpu".into(), "yes".into());

    let mut replicas = deployment("replicas", 5);
    replicas.intent.regions = vec!["eu-west".into()];
    replicas.memory_per_replica = 128 * MIB;

    let mut regions = deployment("regions", 2);
    regions.intent.regions = vec!["sa-east".into()];

    let mut labels = deployment("labels", 1);
    labels.intent.labels.insert("gpu".into(), "yes".into());
    labels.intent.labels.insert("tier".into(), "edge".into());

    let p = place(&[replicas, regions, labels], &members).unwrap();
    let text: Vec<String> = p.reports.iter().map(ToString::to_string).collect();
    assert_eq!(
        text,
        [
            "labels: labels: wanted 1, none of the 5 alive members carries all the labels \
             (gpu=yes on 1, tier=edge on 0)",
            "regions: regions: wanted 2, no alive member in regions [sa-east]; alive members \
             are in [eu-west, us-east]",
            "replicas: memory: wanted 5 replicas of 128 MiB, placed 3: only 3 of the 4 eligible \
             nodes in regions [eu-west] have 128 MiB free after the deployments before it by \
             name; the others have at most 64 MiB free",
        ]
    );
    assert_eq!(p.instances("replicas"), 3);

    let nobody: Vec<aether_placement::Member> = members
        .iter()
        .cloned()
        .map(|mut m| {
            m.alive = false;
            m
        })
        .collect();
    let p = place(&[deployment("x", 1)], &nobody).unwrap();
    assert_eq!(
        p.reports[0].to_string(),
        "x: replicas: wanted 1, no member is alive"
    );
}

#[test]
fn latency_report_names_the_best_node_and_the_target() {
    // eu-west members at the origin, ap-southeast members 48 ms away; the deployment may only
    // run in eu-west but wants 30 ms from ap-southeast.
    let mut members = Vec::new();
    for i in 0..3 {
        let mut m = member(i, "eu-west", GIB);
        m.coordinate = Some(at(0.0, 0.0));
        members.push(m);
        let mut m = member(10 + i, "ap-southeast", GIB);
        m.coordinate = Some(at(48.0, 0.0));
        members.push(m);
    }
    let mut d = deployment("shop", 2);
    d.intent.regions = vec!["eu-west".into()];
    d.intent.latency = latency("ap-southeast", 30);
    let p = place(std::slice::from_ref(&d), &members).unwrap();
    assert_eq!(p.instances("shop"), 2);
    assert_eq!(
        p.reports[0].to_string(),
        "shop: latency: best node 48 ms from ap-southeast, target 30 ms; the nearest node with \
         room (48 ms) got a replica"
    );

    // Lifting the region restriction meets the target.
    d.intent.regions.clear();
    let p = place(std::slice::from_ref(&d), &members).unwrap();
    assert!(p.reports.is_empty(), "{:?}", p.reports);
    let first = p.assignments["shop"][0].0;
    assert!(
        members
            .iter()
            .any(|m| m.id == first && m.region == "ap-southeast")
    );

    // Nobody in the `from` region has a coordinate: the target cannot be judged.
    d.intent.latency = latency("sa-east", 30);
    let p = place(std::slice::from_ref(&d), &members).unwrap();
    assert_eq!(p.reports[0].constraint, Constraint::Latency);
    assert!(
        p.reports[0]
            .detail
            .starts_with("no alive member of region sa-east has a network coordinate")
    );
    assert_eq!(p.instances("shop"), 2);
}

#[test]
fn a_reachable_intent_places_only_on_directly_reachable_members() {
    let manifest = aether_manifest::parse(
        "name = \"public\"\ncomponent = \"p.wasm\"\n[intent]\nreplicas = 2\nreachable = true\n",
        "Aetherfile",
    )
    .expect("manifest");
    let d = Deployment::from_manifest(&manifest, [0; 32], 2);
    let mut members: Vec<_> = (1..=4).map(|i| member(i, "eu-west", 4 * GIB)).collect();
    members[0]
        .labels
        .insert("reachability".into(), "direct".into());
    members[1]
        .labels
        .insert("reachability".into(), "nat".into());
    members[2]
        .labels
        .insert("reachability".into(), "direct".into());
    let p = place(std::slice::from_ref(&d), &members).expect("placement");
    assert_eq!(
        hosts(&p, "public"),
        [id(1), id(3)].into_iter().collect(),
        "members 2 (behind NAT) and 4 (not known yet) are left out"
    );
    assert_eq!(
        unmet_constraint(&d, &members[1])
            .map(|e| e.to_string())
            .as_deref(),
        Some("label reachability=nat, intent wants reachability=direct")
    );
    // Without the flag, any member will do.
    let mut any = manifest.clone();
    any.intent.reachable = false;
    let d = Deployment::from_manifest(&any, [0; 32], 2);
    assert_eq!(unmet_constraint(&d, &members[1]), None);
}

#[test]
fn a_member_meets_an_intent_by_itself_or_names_what_it_lacks() {
    let mut m = member(1, "eu-west", 4 * GIB);
    let mut d = deployment("residency", 1);
    assert_eq!(unmet_constraint(&d, &m), None, "no constraints");
    m.alive = false;
    assert_eq!(
        unmet_constraint(&d, &m),
        None,
        "liveness is not a constraint"
    );
    d.intent.regions = vec!["us-east".into()];
    assert_eq!(
        unmet_constraint(&d, &m),
        Some(Eligibility::Region {
            region: "eu-west".into()
        })
    );
    d.intent.regions = vec!["eu-west".into()];
    d.intent.labels.insert("home".into(), "a".into());
    assert_eq!(
        unmet_constraint(&d, &m).map(|e| e.to_string()).as_deref(),
        Some("no label home (intent wants home=a)")
    );
    m.labels.insert("home".into(), "a".into());
    assert_eq!(unmet_constraint(&d, &m), None);
    m.reserved_memory = 4 * GIB;
    assert_eq!(unmet_constraint(&d, &m), Some(Eligibility::NoMemory));
}

#[test]
fn explain_ranks_like_place_and_says_why_not() {
    let mut members = nine_members();
    members[0].alive = false;
    members[1].labels.insert("tier".into(), "core".into());
    members[2].reserved_memory = 4 * GIB;
    let mut d = deployment("web", 3);
    d.intent.regions = vec!["eu-west".into(), "us-east".into()];
    for m in &mut members[3..] {
        m.labels.insert("tier".into(), "edge".into());
    }
    d.intent.labels.insert("tier".into(), "edge".into());
    members[5].capacity_memory = 32 * MIB;

    let ranking = explain(&d, &members).unwrap();
    assert_eq!(ranking.len(), 9);
    let eligible: Vec<_> = ranking
        .iter()
        .take_while(|c| c.eligibility == Eligibility::Eligible)
        .collect();
    assert_eq!(
        eligible.len(),
        2,
        "members 3 and 4 (5 is too small, 6.. are in ap-southeast)"
    );
    assert!(eligible[0].score >= eligible[1].score);
    let why = |i: u32| {
        ranking
            .iter()
            .find(|c| c.member == id(i))
            .unwrap()
            .eligibility
            .clone()
    };
    assert_eq!(why(0), Eligibility::Dead);
    assert_eq!(
        why(1),
        Eligibility::Label {
            key: "tier".into(),
            wanted: "edge".into(),
            found: Some("core".into())
        }
    );
    assert_eq!(
        why(2),
        Eligibility::Label {
            key: "tier".into(),
            wanted: "edge".into(),
            found: None
        }
    );
    assert_eq!(
        why(5),
        Eligibility::TooSmall {
            allocatable: 32 * MIB,
            needed: 64 * MIB
        }
    );
    assert_eq!(
        why(6),
        Eligibility::Region {
            region: "ap-southeast".into()
        }
    );

    let p = place(&[d], &members).unwrap();
    let placed: Vec<_> = p.assignments["web"].iter().map(|(id, _)| *id).collect();
    let ranked: Vec<_> = eligible.iter().map(|c| c.member).collect();
    assert_eq!(placed, ranked);
}

#[test]
fn duplicates_are_refused() {
    let members = vec![member(1, "eu-west", GIB), member(1, "us-east", GIB)];
    let err = place(&[], &members).unwrap_err();
    assert!(matches!(err, PlacementError::DuplicateMember(_)));
    assert!(err.to_string().contains("appears twice"));
    let members = vec![member(1, "eu-west", GIB)];
    let ds: Vec<Deployment> = vec![deployment("a", 1), deployment("a", 2)];
    assert_eq!(
        place(&ds, &members).unwrap_err(),
        PlacementError::DuplicateDeployment("a".into())
    );
}

#[test]
fn from_manifest_resolves_memory() {
    let toml = r#"
name = "hello"
component = "hello.wasm"
[intent]
replicas = { min = 0, max = 5 }
[limits]
memory = "32MiB"
"#;
    let manifest = aether_manifest::parse(toml, "Aetherfile").unwrap();
    let d = Deployment::from_manifest(&manifest, [1; 32], 2);
    assert_eq!((d.memory_per_replica, d.desired), (32 * MIB, 2));
}

#[test]
fn arch_selects_members_by_their_built_in_label() {
    let mut members = nine_members();
    for (i, m) in members.iter_mut().enumerate() {
        let arch = if i % 4 == 2 { "aarch64" } else { "x86_64" };
        m.labels
            .insert(aether_placement::ARCH_LABEL.into(), arch.into());
    }
    members.push(member(9, "eu-west", 4 * GIB)); // advertises no architecture
    let mut arm = deployment("arm", 3);
    arm.intent.arch = vec!["aarch64".into()];
    let any = deployment("any", 9);
    let p = place(&[arm.clone(), any], &members).unwrap();
    let hosts: Vec<aether_placement::MemberId> =
        p.assignments["arm"].iter().map(|(id, _)| *id).collect();
    assert_eq!(hosts.len(), 2, "only members 2 and 6 run on aarch64");
    assert!(hosts.contains(&id(2)) && hosts.contains(&id(6)));
    assert_eq!(
        p.assignments["arm"].iter().map(|(_, n)| n).sum::<u32>(),
        3,
        "the third replica stacks on an aarch64 member"
    );
    assert_eq!(p.assignments["any"].len(), 9, "no arch: any member");

    let ranking = explain(&arm, &members).unwrap();
    let why = |i: u32| {
        ranking
            .iter()
            .find(|c| c.member == id(i))
            .unwrap()
            .eligibility
            .clone()
    };
    assert_eq!(why(2), Eligibility::Eligible);
    assert_eq!(
        why(0),
        Eligibility::Arch {
            wanted: vec!["aarch64".into()],
            found: Some("x86_64".into())
        }
    );
    assert_eq!(
        why(0).to_string(),
        "runs on x86_64, intent wants arch aarch64"
    );
    assert_eq!(
        why(9),
        Eligibility::Arch {
            wanted: vec!["aarch64".into()],
            found: None
        }
    );

    let mut riscv = deployment("riscv", 1);
    riscv.intent.arch = vec!["riscv64".into(), "s390x".into()];
    let p = place(&[riscv], &members).unwrap();
    assert!(p.assignments["riscv"].is_empty());
    assert_eq!(p.reports.len(), 1);
    assert_eq!(p.reports[0].constraint, Constraint::Arch);
    assert_eq!(
        p.reports[0].to_string(),
        "riscv: arch: wanted 1 on arch riscv64 or s390x, the 10 alive members that qualify \
         otherwise run on [aarch64, unknown, x86_64]"
    );
}

#[test]
fn an_excluded_member_hosts_only_what_is_not_kept_off_it() {
    let members = nine_members();
    let a = deployment("a", 3);
    let b = deployment("b", 3);
    let before = place(&[a.clone(), b.clone()], &members).unwrap();
    // Keep `a` off one of its hosts: it moves, `b` does not.
    let gone = *hosts(&before, "a").iter().next().unwrap();
    let mut a_off = a.clone();
    a_off.excluded = vec![gone];
    let after = place(&[a_off.clone(), b], &members).unwrap();
    assert!(!hosts(&after, "a").contains(&gone));
    assert_eq!(hosts(&after, "a").len(), 3);
    assert_eq!(
        hosts(&after, "a")
            .intersection(&hosts(&before, "a"))
            .count(),
        2,
        "only the replica on the excluded member moves"
    );
    assert_eq!(hosts(&after, "b"), hosts(&before, "b"));
    let ranking = explain(&a_off, &members).unwrap();
    let why = ranking.iter().find(|c| c.member == gone).unwrap();
    assert_eq!(why.eligibility, Eligibility::Excluded);
    assert_eq!(why.eligibility.to_string(), "being drained");
}
