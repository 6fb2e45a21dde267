"""Where the real photographs of `preprocessing.photos` come from: the source table, and finding a file.

Nothing is downloaded. Two kinds of source, each photo recorded by source, file and sha256 so the crops
are the same bytes wherever they are made (a package or wheel with a changed photo is refused, naming the
file and both hashes: never silently different data):

* wheels: the RGB sample photographs that scikit-image, matplotlib and scikit-learn put in their wheels,
  checked in scikit-image 0.26.0, matplotlib 3.11.2 and scikit-learn 1.9.1: scikit-image's astronaut,
  chelsea, coffee, hubble_deep_field, ihc, motorcycle_left + motorcycle_right (one stereo pair: one
  scene), retina, rocket; matplotlib's grace_hopper; scikit-learn's china and flower. The grayscale
  sample photos (camera, coins, moon, ...) are skipped: converted to RGB they have R = G = B, a
  different distribution that a model learns to exploit ("copy red"); scikit-image's non-photographs
  (color, horse, logo, chessboard, ...) are not considered.
* Debian's wallpaper packages (`apt-get install`, Debian 12: mate-backgrounds 1.26.0-1,
  plasma-workspace-wallpapers 4:5.27.5-2, lomiri-wallpapers-16.04 / -20.04 20.04.0-2), looked at one by
  one and only the camera photographs of real scenes kept: mate-backgrounds' nature set (all 12; its
  abstract and desktop sets are renders), 9 of plasma-workspace-wallpapers' 30 wallpapers (the largest
  size of each; the rest are renders and illustrations; ColdRipple and Grey are R = G = B and skipped
  like the grayscale wheel photos), 14 of lomiri-wallpapers' 19 (Fossa, Infinite-Sea, Painting-Colors,
  analogpattern and umang are renders or composites). gnome-backgrounds 43.1, ukui-wallpapers
  20.04.3 and sway-backgrounds 1.7 hold renders, illustrations and logos only: none is used.

`source` is what a photo's split may be decided by (a held-out source: a whole source never trained on):
the wheel's distribution name, or the Debian source package (lomiri-wallpapers' two binary packages are
one source). `package` is what finds the file: the import package of a wheel, the binary Debian package
(what `apt-get install` names) of a wallpaper.
"""

from __future__ import annotations

import importlib.util
import subprocess
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Iterable, List, Tuple

from .errors import PreprocessError
from .fsutil import sha256_file

WHEEL, DEB = "wheel", "deb"


@dataclass(frozen=True)
class Photo:
    """One photo: its source, the package that holds it, its path (inside a wheel's import package, or
    absolute for a Debian package), its sha256 and its scene (the photos of one scene are one unit of the
    split)."""
    source: str
    package: str
    path: str
    sha256: str
    scene: str
    kind: str = WHEEL


def _wheel(dist: str, package: str, path: str, sha256: str, scene: str) -> Photo:
    return Photo(dist, package, path, sha256, scene, WHEEL)


def _deb(pkg: Tuple[str, str], path: str, sha256: str, scene: str) -> Photo:
    return Photo(pkg[0], pkg[1], path, sha256, scene, DEB)


_SK, _MPL, _SKL = ("scikit-image", "skimage"), ("matplotlib", "matplotlib"), ("scikit-learn", "sklearn")
WHEEL_PHOTOS = (
    _wheel(*_SK, "data/astronaut.png", "88431cd9653ccd539741b555fb0a46b61558b301d4110412b5bc28b5e3ea6cb5", "astronaut"),
    _wheel(*_SK, "data/chelsea.png", "596aa1e7cb875eb79f437e310381d26b338a81c2da23439704a73c4651e8c4bb", "chelsea"),
    _wheel(*_SK, "data/coffee.png", "cc02f8ca188b167c775a7101b5d767d1e71792cf762c33d6fa15a4599b5a8de7", "coffee"),
    _wheel(*_SK, "data/hubble_deep_field.jpg", "3a19c5dd8a927a9334bb1229a6d63711b1c0c767fb27e2286e7c84a3e2c2f5f4",
           "hubble_deep_field"),
    _wheel(*_SK, "data/ihc.png", "f8dd1aa387ddd1f49d8ad13b50921b237df8e9b262606d258770687b0ef93cef", "ihc"),
    _wheel(*_SK, "data/motorcycle_left.png", "db18e9c4157617403c3537a6ba355dfeafe9a7eabb6b9b94cb33f6525dd49179",
           "motorcycle"),
    _wheel(*_SK, "data/motorcycle_right.png", "5fc913ae870e42a4b662314bc904d1786bcad8e2f0b9b67dba5a229406357797",
           "motorcycle"),
    _wheel(*_SK, "data/retina.jpg", "38a07f36f27f095e818aea7b96d34202c05176d30253c66733f2e00379e9e0e6", "retina"),
    _wheel(*_SK, "data/rocket.jpg", "c2dd0de7c538df8d111e479619b129464d0269d0ae5fd18ca91d33a7fdfea95c", "rocket"),
    _wheel(*_MPL, "mpl-data/sample_data/grace_hopper.jpg",
           "a8ca6d734765703b09728ab47fe59f473d93ae3967fc24c7c0288c3c7adb7130", "grace_hopper"),
    _wheel(*_SKL, "datasets/images/china.jpg", "8378025ad2519d649d02e32bd98990db4ab572357d9f09841c2fbfbb4fefad29",
           "china"),
    _wheel(*_SKL, "datasets/images/flower.jpg", "a77f6ec41e353afdf8bdff2ea981b2955535d8d83294f8cfa49cf4e423dd5638",
           "flower"),
)

# (Debian source package, binary package)
_MATE_PKG = ("mate-backgrounds", "mate-backgrounds")
_PLASMA_PKG = ("plasma-workspace-wallpapers", "plasma-workspace-wallpapers")
_LOMIRI_16 = ("lomiri-wallpapers", "lomiri-wallpapers-16.04")
_LOMIRI_20 = ("lomiri-wallpapers", "lomiri-wallpapers-20.04")
_MATE = (
    _deb(_MATE_PKG, "/usr/share/backgrounds/mate/nature/Aqua.jpg",
         "5c30118205982da441bf7e6a1ada636a8a0be879408140b3148280c665ed6bce", "aqua"),
    _deb(_MATE_PKG, "/usr/share/backgrounds/mate/nature/Blinds.jpg",
         "f7aac0dcc2e06d0491643e84df3da1d9db7c4610f58806a880d56e074799f600", "blinds"),
    _deb(_MATE_PKG, "/usr/share/backgrounds/mate/nature/Dune.jpg",
         "8a67c2cb0be8c46b70c237311a4fa4d2b4ac7d39568135384787801fa5cc9a91", "dune"),
    _deb(_MATE_PKG, "/usr/share/backgrounds/mate/nature/FreshFlower.jpg",
         "972b0a0c4e5e3fa93f4f244fc84bc64b121a5eac3aaa5856f1308c1f38a02f8e", "freshflower"),
    _deb(_MATE_PKG, "/usr/share/backgrounds/mate/nature/Garden.jpg",
         "d3095ee09d425ef23d27155412136cf14fc3c9af76ca58b452f55e23da324e78", "garden"),
    _deb(_MATE_PKG, "/usr/share/backgrounds/mate/nature/GreenMeadow.jpg",
         "8fa0de0aa4089f7319c9fb7a6d006d4cab6023e8c8853731557cff53567b4832", "greenmeadow"),
    _deb(_MATE_PKG, "/usr/share/backgrounds/mate/nature/LadyBird.jpg",
         "e35a9a4126ef969c90b29c038058c5a575a20eadd84106a37bf1fa9931e7b61d", "ladybird"),
    _deb(_MATE_PKG, "/usr/share/backgrounds/mate/nature/RainDrops.jpg",
         "3e4ea9671c28c90a86cf67b3db9daf18c4741587c596333a7529ca589aaa0c16", "raindrops"),
    _deb(_MATE_PKG, "/usr/share/backgrounds/mate/nature/Storm.jpg",
         "77ca53077831d3237f73393a91fc879158abc046d852941c26e90de336356957", "storm"),
    _deb(_MATE_PKG, "/usr/share/backgrounds/mate/nature/TwoWings.jpg",
         "665e5abf8a5399070a91a9a8e455fe071e5b61697ff78fdeda4e9843ef545aeb", "twowings"),
    _deb(_MATE_PKG, "/usr/share/backgrounds/mate/nature/Wood.jpg",
         "19c78500ac00a622e19907ab9cc7d06d46fe08c4a6142759a84195696150ec07", "wood"),
    _deb(_MATE_PKG, "/usr/share/backgrounds/mate/nature/YellowFlower.jpg",
         "254da96256acb7add685679775a04d1e4a5bc8cd13e5a5a3d61351ce198a5306", "yellowflower"),
)
_PLASMA = (
    _deb(_PLASMA_PKG, "/usr/share/wallpapers/BytheWater/contents/images/2560x1600.jpg",
         "c272434ef39f2abf1ed48a15a8910088020f3165329a5092f3940ec9464bc05f", "bythewater"),
    _deb(_PLASMA_PKG, "/usr/share/wallpapers/ColorfulCups/contents/images/2560x1600.jpg",
         "6e0f3a72feb5a4a9fec191b77e34874c3c69e2d93040deb3f07773e73385023d", "colorfulcups"),
    _deb(_PLASMA_PKG, "/usr/share/wallpapers/DarkestHour/contents/images/2560x1600.jpg",
         "8e3703fae3a3c217b1fc2b399b706cd3720584268d071ba153e4809daa55f1ce", "darkesthour"),
    _deb(_PLASMA_PKG, "/usr/share/wallpapers/EveningGlow/contents/images/2560x1600.jpg",
         "586682dcb362b9f620068f10138f87d0d3649939aef238adc5807cb951976a7a", "eveningglow"),
    _deb(_PLASMA_PKG, "/usr/share/wallpapers/FallenLeaf/contents/images/2560x1600.jpg",
         "95603a6560c7e8d50e0e03b3f4adbe39c5258c72528e74e4ecaea1daf4e499de", "fallenleaf"),
    _deb(_PLASMA_PKG, "/usr/share/wallpapers/Kite/contents/images/2560x1600.jpg",
         "bdca288ce296a981e80659c021cf707caddc702c0c8d4247e60bd618476d47f8", "kite"),
    _deb(_PLASMA_PKG, "/usr/share/wallpapers/OneStandsOut/contents/images/2560x1600.jpg",
         "cb507baf1dafdcae362264f3aba9483ed4be5f6c9fdd770f0ec0920c6d9e80fd", "onestandsout"),
    _deb(_PLASMA_PKG, "/usr/share/wallpapers/Path/contents/images/2560x1600.jpg",
         "7477457d7f17b736259f1b021864778ad4ba802cf3214e6728181ff29126bba8", "path"),
    _deb(_PLASMA_PKG, "/usr/share/wallpapers/summer_1am/contents/images/2560x1600.jpg",
         "c868b50789591dd42910153c768053f1ba0a98cb36bbfc2b7a96a1045d0477f8", "summer_1am"),
)
_LOMIRI = (
    _deb(_LOMIRI_16, "/usr/share/backgrounds/Bridge_by_Sander_Klootwijk.jpg",
         "bd86b081f9975e2b83527f71e49b9271a8ab40885428395969d9f7d834d7f050", "bridge"),
    _deb(_LOMIRI_16, "/usr/share/backgrounds/Dragonfly_by_Bolly.jpg",
         "af5af17841009732def24b09bb1e669a1b09d2b4bdeee7812c371101c30d2bb3", "dragonfly"),
    _deb(_LOMIRI_16, "/usr/share/backgrounds/Picture_0B_by_freespace.jpg",
         "c8c0ab18e48d9e0419fe42881112137f3afafc27dfddc29ec3a6d54c56d225ad", "fig_bowl"),
    _deb(_LOMIRI_16, "/usr/share/backgrounds/Picture_1A_by_freespace.jpg",
         "89e86af38d04daaef975665dc2127e9fa76f0fd68f4eea105a2d0ae3390b010b", "paint_brushes"),
    _deb(_LOMIRI_16, "/usr/share/backgrounds/Wine_by_Jakkub_Mede.jpg",
         "d2e96e6d4da40dd804b3d0ce295e94de04a2d7d9b6785d42cd9d92ba58bced74", "wine"),
    _deb(_LOMIRI_16, "/usr/share/backgrounds/aitzgorri_by_Aitzol_Berasategi.jpg",
         "66268e7b48f8854d36a28765fac6e23ec1aee251daa6da1f64715f201020ad36", "aitzgorri"),
    _deb(_LOMIRI_16, "/usr/share/backgrounds/free_by_Peter_Nerlich.jpg",
         "85a5453c2fed514c75973016f3d862aca62eb7ca087618822469274ac1092373", "free"),
    _deb(_LOMIRI_16, "/usr/share/backgrounds/friends_by_Aitzol_Berasategi.jpg",
         "cc40e313c74e421edffe3403def413c16878ce14661cce7ec5915baeab35538d", "friends"),
    _deb(_LOMIRI_16, "/usr/share/backgrounds/greentock_by_Peter_Nerlich.jpg",
         "e7b20e2db9dcd6e2b278ca55873c2110b35d89cd38b04d0b18728726888e6889", "greentock"),
    _deb(_LOMIRI_16, "/usr/share/backgrounds/life_by_Aitzol_Berasategi.jpg",
         "4c119350ead80201fe256850c3d316309ddfb4bdf10b235ce982dcde0c667c05", "life"),
    _deb(_LOMIRI_16, "/usr/share/backgrounds/picosdeeuropa_by_Aitzol_Berasategi.jpg",
         "414d0072b2f6f2c555deafeaef6e45c4fed6fa9ad26eba6560ca8803959cf97a", "picosdeeuropa"),
    _deb(_LOMIRI_16, "/usr/share/backgrounds/seeding_by_Clements_Engelhardt.jpg",
         "a5634d1ab5e41a3568e92d4a894a500c92b891f9ff734e50bd224d6e185a605f", "seeding"),
    _deb(_LOMIRI_16, "/usr/share/backgrounds/sunset_by_Aitzol_Berasategi.jpg",
         "474dab6a4b9f94dc76c29dfe30e9f5db4af0fd2e33fe5d695f8152b371efca18", "sunset"),
    _deb(_LOMIRI_20, "/usr/share/backgrounds/Kleiber_by_Lukas_Baubkus.jpg",
         "6572410c09f4492c74ccadde133565a14c0161617d5917d4c820c66d65a44ba7", "kleiber"),
)
WALLPAPER_PHOTOS = _MATE + _PLASMA + _LOMIRI
PHOTOS = WHEEL_PHOTOS + WALLPAPER_PHOTOS
# What `make datasets` installs (Makefile): the binary packages that hold WALLPAPER_PHOTOS.
DEB_PACKAGES = tuple(sorted({p.package for p in WALLPAPER_PHOTOS}))

SKIPPED = tuple({"source": "scikit-image", "file": f"data/{n}.png", "reason": "grayscale photograph (R = G = B)"}
                for n in ("camera", "coins", "moon", "brick", "grass", "gravel", "clock_motion", "cell", "page",
                          "text")) + tuple(
    {"source": "plasma-workspace-wallpapers", "file": f"/usr/share/wallpapers/{n}/contents/images/2560x1600.jpg",
     "reason": "grayscale photograph (R = G = B)"} for n in ("ColdRipple", "Grey"))


def sources(photos: Iterable[Photo] = PHOTOS) -> List[str]:
    """The source names, sorted (what a held-out source may name)."""
    return sorted({p.source for p in photos})


def apt_command(packages: Iterable[str] = DEB_PACKAGES) -> str:
    """The one command that installs the wallpaper packages (what errors tell the user to run)."""
    return "apt-get install " + " ".join(sorted(set(packages)))


def locate(photo: Photo) -> Path:
    """The photo's file, checked against its sha256.

    A wheel's package is found without importing it. PreprocessError names the package and the command
    that installs it when it is missing, and the file, both hashes and the installed version when the
    bytes differ."""
    if photo.kind == DEB:
        path, have = Path(photo.path), _deb_version(photo.package)
        if not path.is_file():
            where = f"{photo.package} {have} does not ship it" if have else f"{photo.package} is not installed"
            raise PreprocessError(f"photo {photo.path} is missing ({where}): run `{apt_command()}` "
                                  f"(make datasets does)")
        checked = "the photo list was checked against Debian 12's packages"
    else:
        spec = importlib.util.find_spec(photo.package)
        if spec is None or not spec.submodule_search_locations:
            raise PreprocessError(f"the photos come from the {photo.source} wheel, which is not installed: "
                                  f"pip install {photo.source}")
        path, have = Path(list(spec.submodule_search_locations)[0]) / photo.path, _wheel_version(photo.source)
        checked = "the photo list was checked against scikit-image 0.26.0, matplotlib 3.11.2 and scikit-learn 1.9.1"
        if not path.is_file():
            raise PreprocessError(f"{photo.source} {have} does not ship {photo.path} (looked for {path}); {checked}")
    digest = sha256_file(path)
    if digest != photo.sha256:
        raise PreprocessError(f"{path} ({photo.package} {have or '(version unknown)'}) has sha256 {digest}, "
                              f"expected {photo.sha256}: this package ships a different photo, so the crops "
                              f"would not be the recorded ones ({checked})")
    return path


def installed_version(photo: Photo) -> str:
    """The installed version of the package that holds `photo` (recorded with the crops)."""
    return (_deb_version(photo.package) or "(not installed)") if photo.kind == DEB else _wheel_version(photo.source)


def _wheel_version(dist: str) -> str:
    try:
        return version(dist)
    except PackageNotFoundError:
        return "(not installed)"


def _deb_version(package: str) -> str:
    """dpkg's version of an installed binary package, "" when it is not installed (or dpkg is absent)."""
    try:
        out = subprocess.run(["dpkg-query", "-W", "-f=${Status} ${Version}", package], capture_output=True,
                             text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return ""
    words = out.stdout.split()
    return words[-1] if out.returncode == 0 and "installed" in words[:3] and len(words) >= 4 else ""
