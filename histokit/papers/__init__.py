"""Paper recipes: ``get_recipe(paper, profile)``. Adding a paper = adding a module here and a line below."""
from __future__ import annotations

import importlib

from .recipe import Recipe

# paper id -> module defining ``build(profile) -> Recipe``
_PAPERS = {
    "esvit": "histokit.papers.esvit",
    "chen2022": "histokit.papers.chen2022",
    "cyphervit": "histokit.papers.cyphervit",
    "lgffem": "histokit.papers.lgffem",
}


def list_papers() -> list[str]:
    return sorted(_PAPERS)


def get_recipe(paper: str, profile: str) -> Recipe:
    if paper not in _PAPERS:
        raise ValueError(f"unknown paper {paper!r}; papers are {', '.join(list_papers())}")
    module = importlib.import_module(_PAPERS[paper])
    if profile not in module.PROFILES:
        raise ValueError(f"unknown profile {profile!r} for paper {paper!r}; profiles are {', '.join(module.PROFILES)}")
    return module.build(profile).validate()
