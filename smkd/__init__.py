"""The smkd runner: topologies, scenarios, backends and reports."""
