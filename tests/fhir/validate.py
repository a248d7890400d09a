#!/usr/bin/env python3
"""Validates FHIR R4 resources with the fhir.resources models (an implementation of the
FHIR R4 specification independent of kenko): every *.json file in the directories given,
and each resource a Bundle holds on its own. Exit status 0 when all are valid; otherwise
each invalid file is named with the validator's reasons, and the status is 1.

Needs fhir.resources 6.5 (FHIR R4) with pydantic 1: see docs/fhir.md.
"""

import json
import os
import sys

from fhir.resources import construct_fhir_element


def check(resource):
    construct_fhir_element(resource["resourceType"], resource)
    for entry in resource.get("entry", []) if resource.get("resourceType") == "Bundle" else []:
        inner = entry["resource"]
        construct_fhir_element(inner["resourceType"], inner)


def main(dirs):
    checked, failed = 0, 0
    for d in dirs:
        for name in sorted(os.listdir(d)):
            if not name.endswith(".json"):
                continue
            path = os.path.join(d, name)
            with open(path) as f:
                resource = json.load(f)
            try:
                check(resource)
                checked += 1
            except Exception as e:  # the models raise pydantic's ValidationError and others
                failed += 1
                print(f"INVALID {path}: {e}")
    print(f"{checked} valid, {failed} invalid")
    return 1 if failed or not checked else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
