"""Walker constellations (delta and star) as SGP4 element sets.

A Walker shell ``i:T/P/F`` has ``T`` satellites in ``P`` equally spaced circular
planes of inclination ``i``; adjacent planes are shifted in phase by
``F·360°/T``. Delta patterns spread the ascending nodes over 360°, star
patterns (polar, e.g. Iridium) over 180°.

Satellites are initialised directly with ``Satrec.sgp4init`` (WGS72 constants,
the ones SGP4 is defined with), never through TLE text, so no element is
rounded to TLE precision. The Kozai mean motion starts from Kepler's third
law with WGS72's mu at ``a = R_eq + altitude``; SGP4's J2 terms then move the
orbit-averaged radius by up to ~3.5 km (low inclinations), so the semi-major
axis is corrected by propagating one reference satellite over one orbit until
its mean radius is ``R_eq + altitude`` (to ~10 m; every satellite of a shell
shares that mean motion and inclination, so one calibration serves them all).

Generated satellites carry synthetic catalog numbers from
``WALKER_NORAD_ID_BASE`` (900,000,000) up: 9-digit numbers far above any
object the 18th Space Defense Squadron has catalogued. A ``Satrec`` cannot
hold numbers above 339,999 (Alpha-5), so the satrec's own ``satnum`` is 0.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from datetime import UTC, datetime

import numpy as np
from sgp4.api import WGS72, Satrec

from orbit.types import Constellation, Satellite
from skyinfer.errors import InputError

WGS72_MU_KM3_S2 = 398600.8
WGS72_RADIUS_KM = 6378.135
WALKER_NORAD_ID_BASE = 900_000_000
WALKER_NORAD_ID_MAX = 999_999_999
MIN_ALTITUDE_KM = 160.0
MAX_ALTITUDE_KM = 40_000.0
WALKER_KINDS = ("delta", "star")
# sgp4init counts epochs in days from 1949 December 31 00:00 UT.
_SGP4_EPOCH0 = datetime(1949, 12, 31, tzinfo=UTC)

_TINY_INCLINATION_DEG = 1e-9
_CALIBRATION_SAMPLES = 72  # points per orbit for the mean radius: the J2 terms vary at 2x orbital rate

_SPEC_RE = re.compile(r"^\s*([^:/\s]+)\s*:\s*([^:/\s]+)\s*/\s*([^:/\s]+)\s*/\s*([^:/\s]+)\s*$")


def _problems(inclination_deg: float, total: int, planes: int, phasing: int, altitude_km: float,
              kind: str) -> list[tuple[str, str]]:
    """(field, message) for every invalid field, in declaration order."""
    out: list[tuple[str, str]] = []
    if not math.isfinite(inclination_deg) or not 0.0 <= inclination_deg <= 180.0:
        out.append(("inclination_deg", f"must be within [0, 180], got {inclination_deg:g}"))
    if total < 1:
        out.append(("total", f"must be >= 1, got {total}"))
    if planes < 1:
        out.append(("planes", f"must be >= 1, got {planes}"))
    elif total >= 1 and total % planes != 0:
        out.append(("planes", f"total {total} is not divisible by {planes} planes"))
    if planes >= 1 and not 0 <= phasing < planes:
        out.append(("phasing", f"must be within [0, planes - 1] = [0, {planes - 1}], got {phasing}"))
    if not math.isfinite(altitude_km) or not MIN_ALTITUDE_KM <= altitude_km <= MAX_ALTITUDE_KM:
        out.append(("altitude_km", f"must be within [{MIN_ALTITUDE_KM:g}, {MAX_ALTITUDE_KM:g}] km, "
                                   f"got {altitude_km:g}"))
    if kind not in WALKER_KINDS:
        out.append(("kind", f"must be delta or star, got {kind!r}"))
    return out


@dataclass(frozen=True, slots=True)
class WalkerSpec:
    """A Walker shell ``inclination_deg:total/planes/phasing`` at ``altitude_km``.

    Attributes
    ----------
    inclination_deg
        Orbit inclination, degrees in [0, 180].
    total, planes, phasing
        ``T`` satellites in ``P`` planes (``T`` divisible by ``P``), phasing factor ``0 <= F < P``.
    altitude_km
        Circular-orbit altitude above WGS72's equatorial radius, km in [160, 40000].
    kind
        ``delta`` (nodes over 360°) or ``star`` (nodes over 180°).
    name_prefix
        Prepended to the generated names (``P03S17``) to keep several shells apart.
    """

    inclination_deg: float
    total: int
    planes: int
    phasing: int
    altitude_km: float
    kind: str = "delta"
    name_prefix: str = ""

    def __post_init__(self) -> None:
        problems = _problems(self.inclination_deg, self.total, self.planes, self.phasing, self.altitude_km,
                             self.kind)
        if problems:
            field, message = problems[0]
            raise InputError(f"walker {self.notation}: {field}: {message}")

    @property
    def notation(self) -> str:
        """``53:1584/72/1``."""
        return f"{self.inclination_deg:g}:{self.total}/{self.planes}/{self.phasing}"

    @property
    def per_plane(self) -> int:
        """Satellites per plane, ``T / P``."""
        return self.total // self.planes

    @property
    def raan_spacing_deg(self) -> float:
        """Angle between adjacent ascending nodes: 360°/P (delta) or 180°/P (star)."""
        return (360.0 if self.kind == "delta" else 180.0) / self.planes

    @property
    def phase_offset_deg(self) -> float:
        """In-track shift between slot k of plane p and slot k of plane p + 1: F·360°/T."""
        return self.phasing * 360.0 / self.total

    @property
    def mean_motion_rad_s(self) -> float:
        """Kepler mean motion of the circular orbit (WGS72 mu, no J2), rad/s."""
        a_km = WGS72_RADIUS_KM + self.altitude_km
        return math.sqrt(WGS72_MU_KM3_S2 / a_km**3)

    @classmethod
    def parse(cls, spec: str, altitude_km: float, kind: str = "delta", where: str = "walker",
              name_prefix: str = "") -> WalkerSpec:
        """Parse ``"53:1584/72/1"`` (inclination:total/planes/phasing).

        Errors read ``WHERE: what is wrong`` (``WHERE: field: ...`` for a bad value).
        """
        match = _SPEC_RE.match(str(spec))
        if not match:
            raise InputError(f"{where}: {spec!r} is not a Walker spec; expected "
                             f"INCLINATION_DEG:TOTAL/PLANES/PHASING, e.g. 53:1584/72/1")
        inc_text, total_text, planes_text, phasing_text = match.groups()
        try:
            inclination_deg = float(inc_text)
        except ValueError:
            raise InputError(f"{where}: inclination_deg: {inc_text!r} is not a number") from None
        ints: list[int] = []
        for field, text in (("total", total_text), ("planes", planes_text), ("phasing", phasing_text)):
            try:
                ints.append(int(text))
            except ValueError:
                raise InputError(f"{where}: {field}: {text!r} is not an integer") from None
        total, planes, phasing = ints
        kind_norm = str(kind).strip().lower()
        problems = _problems(inclination_deg, total, planes, phasing, float(altitude_km), kind_norm)
        if problems:
            field, message = problems[0]
            raise InputError(f"{where}: {field}: {message}")
        return cls(inclination_deg, total, planes, phasing, float(altitude_km), kind_norm, name_prefix)


def _width(count: int) -> int:
    """Digits needed for indices 0..count-1 (at least 2, so names line up: P03S17)."""
    return max(2, len(str(count - 1)))


def _init_satrec(epoch_days: float, inclination_rad: float, mean_anomaly_rad: float, no_kozai_rad_min: float,
                 raan_rad: float) -> Satrec:
    satrec = Satrec()
    satrec.sgp4init(
        WGS72, "i", 0, epoch_days,
        0.0, 0.0, 0.0,  # bstar, ndot, nddot: no drag, the shell is idealised
        0.0, 0.0,  # eccentricity, argument of perigee: circular
        inclination_rad, mean_anomaly_rad, no_kozai_rad_min, raan_rad,
    )
    return satrec


def _inclination_rad(spec: WalkerSpec) -> float:
    """Inclination in radians; below 1e-9° it is exactly 0, since SDP4 (deep space) divides by sin(i)
    and a subnormal inclination turns its positions into NaN while 0 is handled as a special case."""
    return 0.0 if spec.inclination_deg < _TINY_INCLINATION_DEG else math.radians(spec.inclination_deg)


def _calibrated_no_kozai_rad_min(spec: WalkerSpec, epoch_days: float, iterations: int = 3) -> float:
    """Kozai mean motion (rad/min, as sgp4init wants it) whose orbit-averaged radius is R_eq + altitude."""
    target_km = WGS72_RADIUS_KM + spec.altitude_km
    command_km = target_km
    inclination_rad = _inclination_rad(spec)
    for _ in range(iterations):
        no_kozai = math.sqrt(WGS72_MU_KM3_S2 / command_km**3) * 60.0
        satrec = _init_satrec(epoch_days, inclination_rad, 0.0, no_kozai, 0.0)
        if satrec.error != 0:
            break
        minutes = np.arange(_CALIBRATION_SAMPLES) * (2.0 * math.pi / no_kozai / _CALIBRATION_SAMPLES)
        err, r_km, _ = satrec.sgp4_array(np.full(minutes.size, satrec.jdsatepoch),
                                         satrec.jdsatepochF + minutes / 1440.0)
        if err.any():
            break
        if not np.isfinite(r_km).all():
            raise InputError(f"walker {spec.notation}: SGP4 gives no finite position for this orbit "
                             f"(inclination_deg {spec.inclination_deg:g}, altitude_km {spec.altitude_km:g})")
        # d(mean radius)/d(commanded a) is 1 to first order in J2: a plain fixed-point step converges.
        command_km += target_km - float(np.linalg.norm(r_km, axis=1).mean())
    return math.sqrt(WGS72_MU_KM3_S2 / command_km**3) * 60.0


def walker_shell(spec: WalkerSpec, epoch_utc: datetime, *,
                 first_norad_id: int = WALKER_NORAD_ID_BASE) -> Constellation:
    """Generate the satellites of a Walker shell, with elements referred to ``epoch_utc``.

    Parameters
    ----------
    spec
        The shell.
    epoch_utc
        Element epoch (aware, or naive meaning UTC). At this instant slot ``s`` of plane ``p`` has
        right ascension of the node ``p·raan_spacing_deg`` and argument of latitude
        ``s·360°/(T/P) + p·phase_offset_deg`` (both in TEME).
    first_norad_id
        Synthetic catalog number of ``P00S00``; satellite ``k`` (plane-major order) gets ``first + k``.
        Must keep the shell within [900000000, 999999999].

    Returns
    -------
    Constellation
        ``T`` satellites ordered plane by plane, slot by slot, named ``{prefix}P{p}S{s}`` with zero-padded
        0-based indices; ``plane`` and ``slot`` set; ``source`` ``walker:{notation}``.
    """
    if not WALKER_NORAD_ID_BASE <= first_norad_id <= WALKER_NORAD_ID_MAX - spec.total + 1:
        raise InputError(f"walker {spec.notation}: first_norad_id: must be within [{WALKER_NORAD_ID_BASE}, "
                         f"{WALKER_NORAD_ID_MAX - spec.total + 1}], got {first_norad_id}")
    epoch = epoch_utc.replace(tzinfo=UTC) if epoch_utc.tzinfo is None else epoch_utc.astimezone(UTC)
    epoch_days = (epoch - _SGP4_EPOCH0).total_seconds() / 86400.0
    inclination_rad = _inclination_rad(spec)
    no_kozai_rad_min = _calibrated_no_kozai_rad_min(spec, epoch_days)
    per_plane = spec.per_plane
    plane_width, slot_width = _width(spec.planes), _width(per_plane)
    source = f"walker:{spec.notation}"
    satellites: list[Satellite] = []
    for plane in range(spec.planes):
        raan_deg = (plane * spec.raan_spacing_deg) % 360.0
        for slot in range(per_plane):
            # Circular orbit: argument of perigee 0, so the mean anomaly is the argument of latitude.
            anomaly_deg = (slot * 360.0 / per_plane + plane * spec.phase_offset_deg) % 360.0
            satrec = _init_satrec(epoch_days, inclination_rad, math.radians(anomaly_deg), no_kozai_rad_min,
                                  math.radians(raan_deg))
            if satrec.error != 0:  # cannot happen for validated specs; keep the message clear anyway
                raise InputError(f"walker {spec.notation}: SGP4 initialisation failed (error {satrec.error})")
            name = f"{spec.name_prefix}P{plane:0{plane_width}d}S{slot:0{slot_width}d}"
            satellites.append(Satellite(name=name, norad_id=first_norad_id + len(satellites), satrec=satrec,
                                        plane=plane, slot=slot, source=source))
    return Constellation(tuple(satellites))
