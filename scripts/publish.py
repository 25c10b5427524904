#!/usr/bin/env python
"""Upload build/ to the Hub kernel repo's ``v<version>`` branch (and CARD.md as the README on main).

Mirrors `kernel-builder upload`: variant directories go under ``build/`` on branch ``v1``; caches (``__pycache__``,
``*.pyc``) are skipped. Uses huggingface_hub's ``repo_type="kernel"`` (``constants.REPO_TYPE_KERNEL``, present in
huggingface_hub >= 2.x; kernels >= 0.14 only loads kernel-type repos). ``--dry-run`` lists what would be sent.

Usage: python scripts/publish.py [--repo-id ORG/NAME] [--dry-run] [--create-pr]
"""
import argparse
import sys
import tomllib
from pathlib import Path

from huggingface_hub import HfApi, constants

ROOT = Path(__file__).resolve().parent.parent
IGNORE = ["**/__pycache__/**", "*.pyc"]


def config() -> dict:
    return tomllib.loads((ROOT / "build.toml").read_text())


def variant_files(build_dir: Path) -> list:
    from kernels._rust import Metadata

    files = []
    for variant in sorted(p for p in build_dir.iterdir() if p.is_dir()):
        Metadata.read_from_file(variant / "metadata.json")  # refuse to publish a variant get_kernel cannot load
        files += [p for p in sorted(variant.rglob("*")) if p.is_file() and "__pycache__" not in p.parts
                  and p.suffix != ".pyc"]
    return files


def main() -> int:
    cfg = config()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repo-id", default=cfg["general"]["hub"]["repo-id"])
    parser.add_argument("--build-dir", type=Path, default=ROOT / "build")
    parser.add_argument("--dry-run", action="store_true", help="list the files and branch, upload nothing")
    parser.add_argument("--create-pr", action="store_true")
    args = parser.parse_args()
    repo_type = getattr(constants, "REPO_TYPE_KERNEL", None)
    if repo_type is None:
        print("this huggingface_hub has no kernel repo type (need >= 2.0); kernels refuses model-type repos",
              file=sys.stderr)
        return 2
    branch = f"v{cfg['general']['version']}"
    files = variant_files(args.build_dir)
    if not files:
        print(f"nothing to upload under {args.build_dir}", file=sys.stderr)
        return 1
    print(f"{args.repo_id} ({repo_type}) branch {branch}: {len(files)} files")
    for f in files:
        print(f"  build/{f.relative_to(args.build_dir)}")
    print(f"{args.repo_id} ({repo_type}) branch main: README.md <- CARD.md")
    if args.dry_run:
        return 0
    api = HfApi()
    api.create_repo(args.repo_id, repo_type=repo_type, exist_ok=True)
    api.create_branch(args.repo_id, branch=branch, repo_type=repo_type, exist_ok=True)
    api.upload_folder(repo_id=args.repo_id, repo_type=repo_type, folder_path=args.build_dir, path_in_repo="build",
                      revision=branch, ignore_patterns=IGNORE, create_pr=args.create_pr,
                      delete_patterns=["build/**"], commit_message=f"Upload build ({branch})")
    benchmarks = ROOT / "benchmarks"
    if benchmarks.is_dir():
        api.upload_folder(repo_id=args.repo_id, repo_type=repo_type, folder_path=benchmarks,
                          path_in_repo="benchmarks", revision=branch, ignore_patterns=IGNORE,
                          create_pr=args.create_pr, commit_message="Upload benchmarks")
    api.upload_file(path_or_fileobj=ROOT / "CARD.md", path_in_repo="README.md", repo_id=args.repo_id,
                    repo_type=repo_type, create_pr=args.create_pr, commit_message="Update card")
    return 0


if __name__ == "__main__":
    sys.exit(main())
