"""YAML for ``bouncer.yaml``: the safe loader, refusing duplicate keys.

Plain YAML lets the last of two equal keys win without a word; a config file that sets
``log`` twice is a mistake the user must hear about (``config.py`` names the line).
"""

from __future__ import annotations

from typing import IO, Any

import yaml

_MERGE_TAG = "tag:yaml.org,2002:merge"


class _Loader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate keys."""


def _unique_keys_mapping(loader: _Loader, node: yaml.MappingNode) -> dict[Any, Any]:
    seen: list[Any] = []
    for key_node, _ in node.value:
        if key_node.tag == _MERGE_TAG:
            continue
        key = loader.construct_object(key_node, deep=True)
        if key in seen:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r}", key_node.start_mark
            )
        seen.append(key)
    return loader.construct_mapping(node, deep=True)


_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _unique_keys_mapping)


def load(stream: IO[str]) -> Any:
    """The document in ``stream``; raises ``yaml.YAMLError`` (duplicate keys included)."""
    return yaml.load(stream, Loader=_Loader)
