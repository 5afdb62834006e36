#!/usr/bin/env python3
"""The peer glance-sync is measured against: copying one image between two clouds
with openstacksdk, written the way its documentation shows.

1. ``download_image(image, output=path, stream=True)``: streams GET /file into
   a local file in 1 MiB chunks and verifies it against the image's
   ``os_hash_value`` (or its MD5 ``checksum``) on the way. ``stream=True`` is
   what the SDK documents for large images: without it the whole image is
   first read into memory (twice: 2.1 GB of RSS for a 1 GiB image).
2. ``create_image(name, filename=path, ...)``: creates the image on the target
   and uploads the file with PUT /file (the default, non-import upload).

Clouds come from clouds.yaml (``OS_CLIENT_CONFIG_FILE``), as for any
openstacksdk program. Prints one JSON line describing the copy.

Usage: peer_openstacksdk.py --source CLOUD --target CLOUD --image NAME_OR_ID
                            [--workdir DIR]
                            [--in-memory-download | --guide-example]

--in-memory-download leaves out ``stream=True``, as the shortest examples do:
the SDK then reads the whole image into memory before writing the file.

--guide-example downloads the way the SDK's image guide shows a streamed
download (its examples/image/download.py): ``download_image(image,
stream=True)``, then ``iter_content(chunk_size=1024)`` into the file and an
MD5 compared with the ``Content-MD5`` header at the end.
"""
import argparse
import hashlib
import json
import os
import sys
import tempfile

import openstack


def download_as_the_guide_shows(conn, image, path):
    md5 = hashlib.md5()
    with open(path, 'wb') as local_image:
        response = conn.image.download_image(image, stream=True)
        for chunk in response.iter_content(chunk_size=1024):
            md5.update(chunk)
            local_image.write(chunk)
        if response.headers['Content-MD5'] != md5.hexdigest():
            raise Exception('Checksum mismatch in downloaded content')


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--source', required=True, help='clouds.yaml entry')
    parser.add_argument('--target', required=True, help='clouds.yaml entry')
    parser.add_argument('--image', required=True, help='image name or id')
    parser.add_argument('--workdir', help='where the local copy is kept')
    variant = parser.add_mutually_exclusive_group()
    variant.add_argument('--in-memory-download', action='store_true',
                         help='download_image without stream=True')
    variant.add_argument('--guide-example', action='store_true',
                         help="download as the SDK guide's streaming example")
    args = parser.parse_args()

    source = openstack.connect(cloud=args.source)
    target = openstack.connect(cloud=args.target)

    image = source.image.find_image(args.image, ignore_missing=False)
    fd, path = tempfile.mkstemp(dir=args.workdir, suffix='.img')
    os.close(fd)
    try:
        if args.guide_example:
            download_as_the_guide_shows(source, image, path)
        else:
            # Verifies the data against os_hash_value/checksum while writing it.
            source.image.download_image(
                image, output=path, stream=not args.in_memory_download)
        copy = target.image.create_image(
            name=image.name,
            filename=path,
            disk_format=image.disk_format,
            container_format=image.container_format,
            wait=True,
        )
    finally:
        os.unlink(path)

    json.dump(
        {
            'id': copy.id,
            'status': copy.status,
            'size': copy.size,
            'checksum': copy.checksum,
        },
        sys.stdout,
    )
    print()


if __name__ == '__main__':
    main()
