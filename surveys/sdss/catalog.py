"""The paper's SDSS sample as a SkyServer/CasJobs query, and the catalogue CSV it produces.

Sample (Doorenbos et al. 2024, following Pasquet et al. 2019): SDSS DR16 spectroscopic galaxies,
``class = 'GALAXY'``, ``zWarning = 0``, ``0.05 < z < 0.15``, main galaxy sample (the legacy TARGET_GALAXY
bit, 0x40 of ``legacy_target1``, or an extinction-corrected Petrosian r <= 17.77), primary spectra
(``sciencePrimary = 1``) joined to their best photometric object (``PhotoObj.objID = SpecObj.bestObjID``).
The MPA-JHU value-added tables (``galSpecIndx``, ``galSpecLine``, ``galSpecExtra``, keyed by specObjID) are
LEFT JOINed as evaluation truth; rows without a match get NULL -> NaN.

The query runs on SkyServer (``SqlSearch``, 500 000-row cap: :func:`query_skyserver` splits the sky into
RA slices) or CasJobs (paste :func:`build_query` output; no cap). The CSV is then read with
:func:`read_catalog_csv`, which validates before any download starts.
"""

from __future__ import annotations

import csv
import io
import os
import time
import urllib.parse
import urllib.request
from pathlib import Path

import numpy as np

from surveys.description import SDSS
from utils.files import atomic_path, write_csv

RELEASES = ("DR16", "DR17")
Z_MIN, Z_MAX = 0.05, 0.15
MAIN_SAMPLE_PETRO_R = 17.77
TARGET_GALAXY_BIT = 0x40  # legacy_target1 / primTarget GALAXY bit (main galaxy sample)
SKYSERVER_URL = "https://skyserver.sdss.org/{release}/SkyServerWS/SearchTools/SqlSearch"
SKYSERVER_ROW_CAP = 500_000

BANDS = SDSS.bands  # "ugriz"
LICK_COLUMNS = (
    "lick_hd_a",
    "lick_hg_a",
    "lick_hb",
    "lick_mgb",
    "lick_fe5270",
    "lick_fe5335",
    "lick_nad",
    "lick_mg2",
    "d4000_n",
)
LINE_COLUMNS = (
    "h_beta_flux",
    "h_beta_flux_err",
    "oiii_5007_flux",
    "oiii_5007_flux_err",
    "h_alpha_flux",
    "h_alpha_flux_err",
    "nii_6584_flux",
    "nii_6584_flux_err",
)
EXTRA_COLUMNS = ("lgm_tot_p50", "sfr_tot_p50", "bptclass")
MPAJHU_COLUMNS = LICK_COLUMNS + LINE_COLUMNS + EXTRA_COLUMNS
# MPA-JHU tables mark "not measured" with this sentinel; it becomes NaN like a missing LEFT JOIN row
MPAJHU_SENTINEL = -9999.0

# name -> (kind, unit, description); kind: "i8" int64, "u8" uint64 id, "f8" float, "S" string
COLUMNS: dict[str, tuple[str, str, str]] = {
    "specObjID": ("u8", "", "SDSS SpecObj.specObjID (unsigned 64-bit)"),
    "objID": ("u8", "", "SDSS PhotoObj.objID of SpecObj.bestObjID"),
    "ra": ("f8", "deg", "right ascension (PhotoObj), ICRS"),
    "dec": ("f8", "deg", "declination (PhotoObj), ICRS"),
    "z": ("f8", "", "spectroscopic redshift (SpecObj.z)"),
    "zErr": ("f8", "", "redshift error"),
    "plate": ("i8", "", "spectroscopic plate"),
    "mjd": ("i8", "d", "MJD of the spectroscopic observation"),
    "fiberID": ("i8", "", "fibre number"),
    "run2d": ("S", "", "spectroscopic reduction (26/103/104: SDSS-I/II; v5_*: BOSS/eBOSS)"),
    "run": ("i8", "", "imaging run"),
    "rerun": ("i8", "", "imaging rerun (301 for DR8+)"),
    "camcol": ("i8", "", "imaging camera column 1-6"),
    "field": ("i8", "", "imaging field"),
    "velDisp": ("f8", "km/s", "pipeline stellar velocity dispersion"),
    "velDispErr": ("f8", "km/s", "velocity dispersion error"),
    **{
        f"cModelMag_{b}": ("f8", "mag", f"composite model magnitude {b} (not extinction-corrected)")
        for b in BANDS
    },
    **{f"extinction_{b}": ("f8", "mag", f"Galactic extinction in {b} (SFD98)") for b in BANDS},
    **{
        c: (
            "f8",
            "Angstrom" if c.startswith("lick_") and c != "lick_mg2" else ("mag" if c == "lick_mg2" else ""),
            f"MPA-JHU galSpecIndx.{c}",
        )
        for c in LICK_COLUMNS
    },
    **{c: ("f8", "1e-17 erg/s/cm2", f"MPA-JHU galSpecLine.{c}") for c in LINE_COLUMNS},
    "lgm_tot_p50": ("f8", "", "MPA-JHU galSpecExtra log10(total stellar mass / Msun), median"),
    "sfr_tot_p50": ("f8", "", "MPA-JHU galSpecExtra log10(total SFR / (Msun/yr)), median"),
    "bptclass": (
        "f8",
        "",
        "MPA-JHU galSpecExtra BPT class (1 SF, 2 low-S/N SF, 3 composite, 4 AGN, "
        "5 low-S/N LINER, -1 unclassifiable; NaN no match)",
    ),
}
REQUIRED = (
    "specObjID",
    "objID",
    "ra",
    "dec",
    "z",
    "plate",
    "mjd",
    "fiberID",
    "run2d",
    "run",
    "rerun",
    "camcol",
    "field",
)


class CatalogError(ValueError):
    """A catalogue that cannot be used; the message names the file, the column and the value."""


def build_query(
    release: str = "DR16",
    limit: int | None = None,
    ra_range: tuple[float, float] | None = None,
    z_range: tuple[float, float] = (Z_MIN, Z_MAX),
) -> str:
    """The SkyServer/CasJobs SQL selecting the paper's sample with the columns this route needs.

    Parameters
    ----------
    release : "DR16" or "DR17" (the SQL is identical; the release selects the server context).
    limit : optional ``TOP n`` for quick looks.
    ra_range : optional [ra_min, ra_max) slice in degrees, used to stay under SkyServer's row cap.
    z_range : redshift window, exclusive at both ends (paper: 0.05 < z < 0.15).

    Returns
    -------
    str : the SQL text.
    """
    if release.upper() not in RELEASES:
        raise ValueError(f"build_query: release={release!r} not in {RELEASES}")
    top = f"TOP {int(limit)} " if limit else ""
    mags = ",\n  ".join(f"p.cModelMag_{b}, p.extinction_{b}" for b in BANDS)
    indx = ", ".join(f"gi.{c}" for c in LICK_COLUMNS)
    line = ", ".join(f"gl.{c}" for c in LINE_COLUMNS)
    ra_cut = f"\n  AND p.ra >= {ra_range[0]:.6f} AND p.ra < {ra_range[1]:.6f}" if ra_range else ""
    return f"""-- galspec: Doorenbos et al. (2024) sample, SDSS {release.upper()}
SELECT {top}
  s.specObjID, p.objID, p.ra, p.dec, s.z, s.zErr,
  s.plate, s.mjd, s.fiberID, s.run2d,
  p.run, p.rerun, p.camcol, p.field,
  s.velDisp, s.velDispErr,
  {mags},
  {indx},
  {line},
  ge.lgm_tot_p50, ge.sfr_tot_p50, ge.bptclass
FROM SpecObj AS s
  JOIN PhotoObj AS p ON p.objID = s.bestObjID
  LEFT JOIN galSpecIndx AS gi ON gi.specObjID = s.specObjID
  LEFT JOIN galSpecLine AS gl ON gl.specObjID = s.specObjID
  LEFT JOIN galSpecExtra AS ge ON ge.specObjID = s.specObjID
WHERE s.class = 'GALAXY'
  AND s.zWarning = 0
  AND s.sciencePrimary = 1
  AND s.z > {z_range[0]} AND s.z < {z_range[1]}
  AND ((s.legacy_target1 & {TARGET_GALAXY_BIT}) != 0
       OR (p.petroMag_r - p.extinction_r) <= {MAIN_SAMPLE_PETRO_R}){ra_cut}
ORDER BY s.specObjID
"""


def _http_get(url: str, timeout: float) -> bytes:
    req = urllib.request.Request(url, headers={"User-Agent": "galspec-sdss/1"})
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        return resp.read()


def query_skyserver(
    out_csv: str | os.PathLike,
    release: str = "DR16",
    limit: int | None = None,
    base_url: str | None = None,
    n_ra_slices: int = 1,
    timeout: float = 600.0,
    retries: int = 3,
    use_astroquery: bool | None = None,
) -> Path:
    """Run :func:`build_query` on SkyServer and write one validated CSV (atomically).

    Parameters
    ----------
    out_csv : where the catalogue CSV goes (``<out_csv>.partial`` until complete).
    release : "DR16" or "DR17".
    limit : optional ``TOP n`` (per RA slice).
    base_url : the ``SqlSearch`` endpoint; default the public SkyServer for ``release``. Tests point this at
        127.0.0.1. When given, astroquery is never used.
    n_ra_slices : split 0..360 deg into this many RA slices, one request each (SkyServer returns at most
        500 000 rows per request; the full DR16 sample needs >= 4 slices -- 24 is a safe choice).
    timeout, retries : per-request timeout (s) and retries with exponential backoff.
    use_astroquery : use ``astroquery.sdss.SDSS.query_sql`` (None: if installed and no base_url given).

    Returns
    -------
    Path of the written CSV.
    """
    out_csv = Path(out_csv)
    if use_astroquery is None:
        try:
            import astroquery.sdss  # noqa: F401

            use_astroquery = base_url is None
        except ImportError:
            use_astroquery = False
    url = base_url or SKYSERVER_URL.format(release=release.lower())
    edges = np.linspace(0.0, 360.0, n_ra_slices + 1)
    header: list[str] | None = None
    rows: list[list[str]] = []
    for lo, hi in zip(edges[:-1], edges[1:]):
        sql = build_query(release, limit, (lo, hi) if n_ra_slices > 1 else None)
        if use_astroquery:
            from astroquery.sdss import SDSS

            tab = SDSS.query_sql(sql, data_release=int(release[2:]), timeout=timeout)
            text = "" if tab is None else _table_to_csv(tab)
        else:
            q = urllib.parse.urlencode({"cmd": sql, "format": "csv"})
            for attempt in range(retries + 1):
                try:
                    text = _http_get(f"{url}?{q}", timeout).decode("utf-8")
                    break
                except OSError as e:
                    if attempt == retries:
                        raise CatalogError(
                            f"{url}: query: failed after {retries + 1} attempts: {e}"
                        ) from None
                    time.sleep(min(60.0, 2.0**attempt))
        h, r = _parse_csv_text(text, source=url)
        if h is None:
            continue
        if header is not None and h != header:
            raise CatalogError(
                f"{url}: header: RA slice [{lo}, {hi}) returned columns {h}, expected {header}"
            )
        header = h
        if len(r) >= SKYSERVER_ROW_CAP:
            raise CatalogError(
                f"{url}: rows: RA slice [{lo}, {hi}) hit the {SKYSERVER_ROW_CAP}-row cap; "
                "use more n_ra_slices"
            )
        rows.extend(r)
    if header is None:
        raise CatalogError(f"{url}: result: no rows returned")
    out_csv.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out_csv) as tmp:
        write_csv(tmp, header, rows)  # (its own temporary name inside ours)
        read_catalog_csv(tmp, display_name=str(out_csv), z_range=None)  # validate before it counts
    return out_csv


def _table_to_csv(tab) -> str:
    buf = io.StringIO()
    tab.write(buf, format="ascii.csv")
    return buf.getvalue()


def _parse_csv_text(text: str, source: str) -> tuple[list[str] | None, list[list[str]]]:
    """Parse SkyServer CSV (it may start with a ``#Table1`` line); error pages become CatalogError."""
    lines = [ln for ln in text.splitlines() if ln.strip() and not ln.startswith("#")]
    if not lines:
        return None, []
    if lines[0].lstrip().startswith("<") or "error" in lines[0].lower() and "," not in lines[0]:
        raise CatalogError(f"{source}: response: not CSV (server error?): {lines[0][:200]!r}")
    reader = csv.reader(lines)
    header = [h.strip() for h in next(reader)]
    return header, [row for row in reader]


def _parse_value(kind: str, s: str, path, col: str, row: int):
    s = s.strip()
    missing = s == "" or s.lower() in ("null", "nan", "none")
    if kind == "S":
        return s
    if missing:
        if kind == "f8":
            return np.nan
        raise CatalogError(f"{path}: column {col}: row {row}: empty value (integer column)")
    try:
        if kind == "f8":
            return float(s)
        v = int(s) if s.lstrip("+-").isdigit() else int(float(s))
    except ValueError:
        raise CatalogError(
            f"{path}: column {col}: row {row}: value {s!r} is not "
            f"{'a number' if kind == 'f8' else 'an integer'}"
        ) from None
    if kind == "u8" and not 0 <= v < 2**64:
        raise CatalogError(f"{path}: column {col}: row {row}: value {s!r} out of the unsigned 64-bit range")
    return v


def read_catalog_csv(
    path: str | os.PathLike,
    z_range: tuple[float, float] | None = (Z_MIN, Z_MAX),
    display_name: str | None = None,
) -> dict[str, np.ndarray]:
    """Read and validate a catalogue CSV (SkyServer/CasJobs output of :func:`build_query`).

    Column names are matched case-insensitively and mapped to :data:`COLUMNS` spelling; unknown columns are
    kept as float if numeric, else as strings. MPA-JHU columns: empty/NULL/-9999 -> NaN.

    Parameters
    ----------
    path : the CSV file.
    z_range : reject rows with z outside [z_min, z_max] (None: no redshift check).
    display_name : name used in error messages (default ``path``).

    Returns
    -------
    dict column -> numpy array (uint64 ids, int64 integers, float64, bytes for run2d).

    Raises
    ------
    CatalogError : one line naming the file, the column and the offending value, before any work starts.
    """
    name = display_name or str(path)
    p = Path(path)
    if not p.exists():
        raise CatalogError(f"{name}: file: does not exist")
    header, rows = _parse_csv_text(p.read_text(), source=name)
    if header is None or not rows:
        raise CatalogError(f"{name}: file: no data rows")
    canon = {k.lower(): k for k in COLUMNS}
    names = [canon.get(h.lower(), h) for h in header]
    dup = {n for n in names if names.count(n) > 1}
    if dup:
        raise CatalogError(f"{name}: header: duplicate column(s) {sorted(dup)}")
    missing = [c for c in REQUIRED if c not in names]
    if missing:
        raise CatalogError(f"{name}: column {missing[0]}: missing (required: {', '.join(REQUIRED)})")
    out: dict[str, np.ndarray] = {}
    for j, col in enumerate(names):
        kind = COLUMNS[col][0] if col in COLUMNS else None
        vals = []
        for i, row in enumerate(rows):
            if len(row) != len(names):
                raise CatalogError(f"{name}: row {i + 2}: has {len(row)} fields, header has {len(names)}")
            if kind is None:
                s = row[j].strip()
                try:
                    vals.append(float(s) if s else np.nan)
                except ValueError:
                    kind = "S"
                    vals = [r[j].strip() for r in rows[: i + 1]]
                continue
            vals.append(_parse_value(kind, row[j], name, col, i + 2))
        kind = kind or "f8"
        dtype = {"u8": np.uint64, "i8": np.int64, "f8": np.float64, "S": "S"}[kind]
        arr = np.array(vals, dtype=dtype)
        if col in MPAJHU_COLUMNS:
            arr[arr == MPAJHU_SENTINEL] = np.nan
        out[col] = arr
    for col, lo, hi in (("ra", 0.0, 360.0), ("dec", -90.0, 90.0)):
        bad = ~((out[col] >= lo) & (out[col] <= hi))
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise CatalogError(
                f"{name}: column {col}: row {i + 2}: value {out[col][i]!r} outside [{lo}, {hi}]"
            )
    if z_range is not None:
        bad = ~((out["z"] >= z_range[0]) & (out["z"] <= z_range[1]))
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise CatalogError(
                f"{name}: column z: row {i + 2}: value {out['z'][i]!r} outside [{z_range[0]}, {z_range[1]}]"
            )
    for col in ("camcol",):
        bad = ~np.isin(out[col], np.arange(1, 7))
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise CatalogError(f"{name}: column {col}: row {i + 2}: value {out[col][i]} not in 1..6")
    ids, counts = np.unique(out["specObjID"], return_counts=True)
    if (counts > 1).any():
        raise CatalogError(
            f"{name}: column specObjID: value {ids[counts > 1][0]} appears {counts[counts > 1][0]} times"
        )
    return out
