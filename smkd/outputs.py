"""A run's machine-readable outputs: summary.json and a JUnit XML file for CI."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ElementTree
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .runner import RunResult


def write_summary(result: RunResult, node_status: dict[str, Any]) -> None:
    summary = {
        "scenario": result.scenario.name,
        "source": str(result.scenario.source.resolve()),
        "topology": str(result.scenario.topology.source),
        "backend": result.backend,
        "backend_details": result.backend_details,
        "passed": result.passed,
        "started": result.started,
        "seconds": round(result.finished - result.started, 3),
        "ready_error": result.ready_error,
        "action_errors": result.action_errors,
        "expectations": [
            {
                "name": o.expectation.name,
                "type": o.expectation.kind,
                "line": o.expectation.line,
                "passed": o.passed,
                "detail": o.detail,
            }
            for o in result.outcomes
        ],
        "nodes": node_status,
    }
    path = result.run_dir / "summary.json"
    path.write_text(json.dumps(summary, indent=2) + "\n")


def write_junit(result: RunResult) -> None:
    cases = [(o.expectation.name, o.passed, o.detail) for o in result.outcomes]
    if result.ready_error:
        cases.insert(0, ("topology becomes ready", False, result.ready_error))
    for error in result.action_errors:
        cases.append(("timeline action", False, error))

    failures = sum(not passed for _, passed, _ in cases)
    seconds = f"{result.finished - result.started:.3f}"
    suites = ElementTree.Element("testsuites")
    suite = ElementTree.SubElement(
        suites,
        "testsuite",
        name=f"smkd.{result.scenario.name}",
        tests=str(len(cases)),
        failures=str(failures),
        errors="0",
        time=seconds,
    )
    for name, passed, detail in cases:
        case = ElementTree.SubElement(
            suite,
            "testcase",
            classname=f"smkd.{result.scenario.name}",
            name=name,
        )
        if not passed:
            failure = ElementTree.SubElement(case, "failure", message=detail)
            failure.text = detail
    ElementTree.indent(suites)
    tree = ElementTree.ElementTree(suites)
    tree.write(result.run_dir / "junit.xml", encoding="utf-8", xml_declaration=True)
