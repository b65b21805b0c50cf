"""CI: the built wheel carries the licence text, the typing marker and the Hydra configs."""

import sys
import zipfile

wheel = sys.argv[1]
names = zipfile.ZipFile(wheel).namelist()
required = {
    "licence": lambda n: n.endswith(".dist-info/licenses/LICENSE"),
    "py.typed": lambda n: n == "sde_diffusion/py.typed",
    "conf/config.yaml": lambda n: n == "sde_diffusion/conf/config.yaml",
}
missing = [what for what, found in required.items() if not any(found(n) for n in names)]
if missing:
    sys.exit(f"{wheel} lacks {missing}")
print(f"{wheel}: {len(names)} files, with {', '.join(required)}")
