"""Paper recipes: ``get_recipe(paper, profile)``. Adding a paper = adding a module here and a line below, or, for a
recipe built elsewhere (a test, a notebook), :func:`register` while it runs."""
from __future__ import annotations

import importlib
from contextlib import contextmanager
from typing import Iterator

from .recipe import Recipe

# paper id -> module defining ``build(profile) -> Recipe``
_PAPERS = {
    "esvit": "histokit.papers.esvit",
    "chen2022": "histokit.papers.chen2022",
    "cyphervit": "histokit.papers.cyphervit",
    "lgffem": "histokit.papers.lgffem",
}
_REGISTERED: dict[tuple[str, str], Recipe] = {}   # (paper, profile) -> a recipe given to register()


def list_papers() -> list[str]:
    return sorted(set(_PAPERS) | {paper for paper, _ in _REGISTERED})


@contextmanager
def register(*recipes: Recipe) -> Iterator[None]:
    """Make ``recipes`` (each for its ``paper`` and ``profile``) what :func:`get_recipe` returns while the ``with``
    block runs, so the stages run a paper that is not one of the package's: ``with register(recipe): ...``."""
    added = []
    try:
        for recipe in recipes:
            key = (recipe.paper, recipe.profile)
            if recipe.paper in _PAPERS or key in _REGISTERED:
                raise ValueError(f"paper {recipe.paper!r} ({recipe.profile}) is already a recipe; choose another name")
            _REGISTERED[key] = recipe.validate()
            added.append(key)
        yield
    finally:
        for key in added:
            _REGISTERED.pop(key, None)


def get_recipe(paper: str, profile: str) -> Recipe:
    if (paper, profile) in _REGISTERED:
        return _REGISTERED[(paper, profile)]
    if paper not in _PAPERS:
        known = ", ".join(list_papers())
        if any(p == paper for p, _ in _REGISTERED):
            raise ValueError(f"unknown profile {profile!r} for paper {paper!r}; profiles are "
                             f"{', '.join(pr for p, pr in _REGISTERED if p == paper)}")
        raise ValueError(f"unknown paper {paper!r}; papers are {known}")
    module = importlib.import_module(_PAPERS[paper])
    if profile not in module.PROFILES:
        raise ValueError(f"unknown profile {profile!r} for paper {paper!r}; profiles are {', '.join(module.PROFILES)}")
    return module.build(profile).validate()
