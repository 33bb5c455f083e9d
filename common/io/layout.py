"""Cache layouts: the invertible axis permutation/flip between a volume as stored in its NIfTI file and a cache.

Each project stores its volumes in one array order that suits its network (SAINT and RSTN slice along the last
axis, SPiN along the first, EasySR makes axis 1 thick). A project declares that order once as a
:class:`CacheLayout`; prepare, predict and eval go through it instead of moving axes by hand::

    LAYOUT = CacheLayout(order=(1, 0, 2))                # RSTN: rows and columns swapped
    cached, cache_affine, axes = LAYOUT.to_cache(volume.data, volume.affine)
    data, affine = axes.to_file(prediction, cache_affine)  # the file's array order and its exact affine

A layout may hold a rule resolved from the affine: ``move="axial"`` puts the array axis closest to the world
superior-inferior axis at ``position``, ``move="thickest"`` the axis with the largest voxel size (or one given
by the caller), and ``canonical=True`` first reorients to RAS+ (nibabel's closest-axis rule). The resolved
:class:`AxisMap` says where every file axis went; prepare stores it in the case's metadata (``meta["axes"]``)
so a cached array can be put back in its file order later (:meth:`CacheLayout.stored_axes`).

Affines stay voxel-to-world exact: a permutation moves affine columns (bit-exact both ways); a flip also moves
the origin to the other end of that axis, which the inverse subtracts again.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from nibabel import orientations

from common.errors import DataError
from common.io.nifti import through_plane_axis, voxel_spacing

__all__ = ["AxisMap", "CacheLayout", "axial_axis"]

_NO_FLIP = (False, False, False)


def axial_axis(affine: np.ndarray) -> int:
    """Returns the array axis whose direction is closest to the world superior-inferior axis.

    Voxel sizes are not used: thin-slice CT can have slices thinner than its pixels.
    """
    directions = np.asarray(affine, dtype=np.float64)[:3, :3] / voxel_spacing(affine)
    return int(np.argmax(np.abs(directions[2])))


@dataclass(frozen=True)
class AxisMap:
    """A resolved layout: cache axis ``i`` is file axis ``order[i]``, reversed where ``flip[i]``.

    Args:
        order: a permutation of (0, 1, 2).
        flip: per cache axis, whether it runs opposite to its file axis.
    """

    order: tuple[int, int, int] = (0, 1, 2)
    flip: tuple[bool, bool, bool] = _NO_FLIP

    def __post_init__(self) -> None:
        if sorted(self.order) != [0, 1, 2] or len(self.flip) != 3:
            raise ValueError(f"order must be a permutation of (0, 1, 2) and flip 3 flags, got {self}")

    def file_axis(self, cache_axis: int) -> int:
        """Returns the file array axis that became ``cache_axis``."""
        return self.order[cache_axis]

    def to_cache(self, data: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Returns ``(array in cache order (C-contiguous), its float64 affine)`` of a file-ordered volume.

        Args:
            data: ``[A0, A1, A2]`` as stored in the file (extra trailing axes, e.g. channels, follow along).
            affine: its ``[4, 4]`` voxel -> world (mm) matrix.
        """
        moved = np.transpose(data, (*self.order, *range(3, np.ndim(data))))
        flipped = [i for i in range(3) if self.flip[i]]
        if flipped:
            moved = np.flip(moved, tuple(flipped))
        out = np.array(affine, dtype=np.float64)
        out[:3, :3] = out[:3, list(self.order)]
        for i in flipped:
            out[:3, 3] += (moved.shape[i] - 1) * out[:3, i]
            out[:3, i] = -out[:3, i]
        return np.ascontiguousarray(moved), out

    def to_file(self, data: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Returns ``(array in file order (C-contiguous), its float64 affine)``: the inverse of :meth:`to_cache`.

        Args:
            data: a cache-ordered array (a prediction on the cache grid, or the cached volume itself).
            affine: the affine of that cache-ordered array.
        """
        out = np.array(affine, dtype=np.float64)
        flipped = [i for i in range(3) if self.flip[i]]
        for i in flipped:
            out[:3, i] = -out[:3, i]
            out[:3, 3] -= (np.shape(data)[i] - 1) * out[:3, i]
        if flipped:
            data = np.flip(data, tuple(flipped))
        inverse = tuple(int(a) for a in np.argsort(self.order))
        out[:3, :3] = out[:3, list(inverse)]
        return np.ascontiguousarray(np.transpose(data, (*inverse, *range(3, np.ndim(data))))), out

    def to_meta(self) -> dict[str, list]:
        """Returns the JSON form stored in a cache entry's metadata (``meta["axes"]``)."""
        return {"order": list(self.order), "flip": list(self.flip)}

    @classmethod
    def from_meta(cls, axes: Mapping[str, Any]) -> AxisMap:
        """Returns the map of :meth:`to_meta`'s dict."""
        order = tuple(int(a) for a in axes["order"])
        flip = tuple(bool(f) for f in axes.get("flip", _NO_FLIP))
        return cls(order, flip)  # type: ignore[arg-type]


@dataclass(frozen=True)
class CacheLayout:
    """How a project orders a volume's axes in its cache (see the module docstring).

    Args:
        order: the fixed permutation (cache axis ``i`` = axis ``order[i]`` of the volume after ``canonical``),
            used when ``move`` is None.
        move: "axial" or "thickest": the file axis chosen by that rule goes to ``position``, the others keep
            their order; None for a fixed ``order``.
        position: cache axis of the moved axis.
        canonical: reorient to RAS+ (closest axes, flips allowed) before ``order``.
    """

    order: tuple[int, int, int] = (0, 1, 2)
    move: str | None = None
    position: int = 2
    canonical: bool = False

    def __post_init__(self) -> None:
        if self.move not in (None, "axial", "thickest"):
            raise ValueError(f"move must be None, 'axial' or 'thickest', got {self.move!r}")

    @property
    def is_fixed(self) -> bool:
        """Whether the map is the same for every affine (it can be rebuilt without the case's metadata)."""
        return self.move is None and not self.canonical

    def axes(self, affine: np.ndarray, axis: int | None = None) -> AxisMap:
        """Returns the map of a volume with this affine.

        Args:
            affine: the file's ``[4, 4]`` affine.
            axis: with ``move``, the file axis to move (default: the one the rule picks from the affine).
        """
        if self.move is not None:
            if axis is None:
                axis = axial_axis(affine) if self.move == "axial" else through_plane_axis(affine)
            rest = [a for a in range(3) if a != int(axis)]
            rest.insert(self.position, int(axis))
            return AxisMap(tuple(rest))  # type: ignore[arg-type]
        first: tuple[int, ...] = (0, 1, 2)
        flip: tuple[bool, ...] = _NO_FLIP
        if self.canonical:
            ornt = orientations.io_orientation(np.asarray(affine, dtype=np.float64))
            first = tuple(int(np.flatnonzero(ornt[:, 0] == i)[0]) for i in range(3))
            flip = tuple(bool(ornt[first[i], 1] < 0) for i in range(3))
        order = tuple(first[o] for o in self.order)
        return AxisMap(order, tuple(flip[o] for o in self.order))  # type: ignore[arg-type]

    def to_cache(self, data: np.ndarray, affine: np.ndarray, axis: int | None = None
                 ) -> tuple[np.ndarray, np.ndarray, AxisMap]:
        """Returns ``(cache-ordered array, its affine, the map)`` of a file-ordered volume (see :meth:`axes`)."""
        axes = self.axes(affine, axis)
        return (*axes.to_cache(data, affine), axes)

    def stored_axes(self, meta: Mapping[str, Any] | None, source: Any = None) -> AxisMap:
        """Returns the map a cache entry was written with: ``meta["axes"]``, or the fixed order.

        Raises:
            DataError: the entry has no ``axes`` and the layout depends on the affine (written by an earlier
                prepare: run it again with ``--overwrite``).
        """
        if meta and "axes" in meta:
            return AxisMap.from_meta(meta["axes"])
        if self.is_fixed:
            return AxisMap(self.order)
        raise DataError(source, "the cache entry does not say how its axes were ordered (no meta 'axes'): "
                                "run the project's prepare again with --overwrite")

    def describe(self, shape_names: Sequence[str] = ("X", "Y", "Z")) -> str:
        """Returns the layout in words, e.g. ``"[Z, X, Y] of the RAS+ array [X, Y, Z]"``."""
        if self.move is not None:
            return f"the {self.move} axis at array axis {self.position}, the others in file order"
        names = "[" + ", ".join(shape_names[o] for o in self.order) + "]"
        what = "the RAS+ array" if self.canonical else "the file array"
        return f"{names} of {what} [{', '.join(shape_names)}]"
