"""Print the `dev` dependency group pinned to uv.lock's versions, one `name==version` a line.

`make test-lowest` resolves our runtime dependencies at their lowest allowed versions; the test
tools are not what it tests, so it takes them (but not their dependencies) as locked.
"""

import sys
import tomllib

with open(sys.argv[1] if len(sys.argv) > 1 else "uv.lock", "rb") as f:
    lock = tomllib.load(f)
versions = {p["name"]: p["version"] for p in lock["package"]}
(project,) = (p for p in lock["package"] if p.get("source") == {"editable": "."})
for dep in project["dev-dependencies"]["dev"]:
    extras = f"[{','.join(dep['extra'])}]" if dep.get("extra") else ""
    marker = f" ; {dep['marker']}" if dep.get("marker") else ""
    print(f"{dep['name']}{extras}=={versions[dep['name']]}{marker}")
