//! Which mappings a backfill takes: those `--mapping` names, else all; and for a resync
//! (`--resync`), every one-way mapping that shares a target's position with a selected one, since
//! a target keeps one position per source.

use crate::config::{Config, Direction, Mapping};

use super::BackfillOptions;

/// The mappings `options` select: those named by `--mapping`, else all; a resync without
/// `--mapping` takes the one-way mappings (of the `--from` site, if given), and its selection
/// is checked ([`check_resync_selection`]).
pub(super) fn selection<'a>(
    config: &'a Config,
    options: &BackfillOptions,
) -> Result<Vec<&'a Mapping>, String> {
    let selected: Vec<&Mapping> = config
        .mappings
        .iter()
        .filter(|m| options.mappings.is_empty() || options.mappings.contains(&m.name))
        .filter(|m| !options.resync || !options.mappings.is_empty() || resyncable(m, options))
        .collect();
    if options.resync {
        check_resync_selection(config, &selected, options)?;
    }
    Ok(selected)
}

/// Without `--mapping`, a resync takes the one-way mappings (of the `--from` site, if given).
fn resyncable(mapping: &Mapping, options: &BackfillOptions) -> bool {
    match &mapping.direction {
        Direction::OneWay { from, .. } => options.from.as_ref().is_none_or(|f| f == from),
        Direction::Both => false,
    }
}

/// A resync replaces the positions its targets hold of the source, which are one per source
/// and target: every one-way mapping from the source into a target resynced must be resynced
/// with it, or the others would skip (or repeat) the changes between the old positions and the
/// new snapshot. Two-way mappings keep their positions in the merge engine: not resynced.
fn check_resync_selection(
    config: &Config,
    selected: &[&Mapping],
    options: &BackfillOptions,
) -> Result<(), String> {
    if selected.is_empty() {
        return Err(match &options.from {
            Some(from) => format!("no one-way mapping copies from site {from}: nothing to resync"),
            None => "no one-way mapping to resync".into(),
        });
    }
    for mapping in selected {
        let Direction::OneWay { from, to } = &mapping.direction else {
            return Err(format!(
                "mapping {} is two-way: --resync is for one-way mappings (the merge engine keeps where it read each site in its state directory); leave it out",
                mapping.name
            ));
        };
        let missing: Vec<&str> = config
            .mappings
            .iter()
            .filter(|m| {
                matches!(&m.direction, Direction::OneWay { from: f, to: t } if f == from && t == to)
            })
            .filter(|m| !selected.iter().any(|s| s.name == m.name))
            .map(|m| m.name.as_str())
            .collect();
        if !missing.is_empty() {
            return Err(format!(
                "mapping(s) {} also stream from {from} into {to}, whose position of {from} a resync replaces: resync them together (`{}`, or add --mapping for each)",
                missing.join(", "),
                crate::link::resync_command(from)
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::super::DEFAULT_CHUNK_ROWS;
    use super::*;

    fn config() -> Config {
        let text = "[sites.store]\nkind = \"postgres\"\nurl = \"postgres://duplex@127.0.0.1/shop\"\n\
             [sites.erp]\nkind = \"mysql\"\nurl = \"mysql://duplex@127.0.0.1/erp\"\n\
             [sites.wms]\nkind = \"postgres\"\nurl = \"postgres://duplex@127.0.0.1/wms\"\n\
             [[mappings]]\nname = \"orders\"\ntables = { store = \"public.orders\", erp = \"erp.orders\" }\ndirection = \"store->erp\"\n\
             [[mappings]]\nname = \"lines\"\ntables = { store = \"public.lines\", erp = \"erp.lines\" }\ndirection = \"store->erp\"\n\
             [[mappings]]\nname = \"stock\"\ntables = { store = \"public.stock\", wms = \"public.stock\" }\ndirection = \"store->wms\"\n\
             [[mappings]]\nname = \"items\"\ntables = { erp = \"erp.items\", wms = \"public.items\" }\ndirection = \"both\"\n";
        Config::from_toml(text, Path::new("duplex.toml"), Path::new(".")).unwrap()
    }

    fn options(mappings: &[&str], from: Option<&str>) -> BackfillOptions {
        BackfillOptions {
            mappings: mappings.iter().map(|m| (*m).to_owned()).collect(),
            from: from.map(str::to_owned),
            jobs: 1,
            allow_nonempty: false,
            restart: false,
            chunk_rows: DEFAULT_CHUNK_ROWS,
            resync: true,
        }
    }

    fn names(selected: Result<Vec<&Mapping>, String>) -> Vec<String> {
        selected.unwrap().iter().map(|m| m.name.clone()).collect()
    }

    #[test]
    fn a_resync_takes_every_one_way_mapping_sharing_a_target_position() {
        let config = config();
        assert_eq!(
            names(selection(&config, &options(&[], Some("store")))),
            ["orders", "lines", "stock"]
        );
        assert_eq!(
            names(selection(&config, &options(&[], None))),
            ["orders", "lines", "stock"]
        );
        assert_eq!(
            names(selection(&config, &options(&["stock"], None))),
            ["stock"]
        );
        assert_eq!(
            names(selection(&config, &options(&["orders", "lines"], None))),
            ["orders", "lines"]
        );
        let refused = selection(&config, &options(&["orders"], None)).unwrap_err();
        assert!(
            refused.contains("lines") && refused.contains("duplex backfill --resync --from store"),
            "{refused}"
        );
        let refused = selection(&config, &options(&["items"], None)).unwrap_err();
        assert!(refused.contains("two-way"), "{refused}");
        let refused = selection(&config, &options(&[], Some("wms"))).unwrap_err();
        assert!(
            refused.contains("no one-way mapping copies from site wms"),
            "{refused}"
        );
    }
}
