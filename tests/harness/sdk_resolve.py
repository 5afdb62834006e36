"""What openstacksdk resolves for a cloud, as one JSON object on stdout (tests/clouds_parity.rs).

Run with the harness venv's python (it has openstacksdk 4.22):
    sdk_resolve.py [CLOUD]     no CLOUD: openstacksdk's own choice (OS_CLOUD, envvars, the only one)

Resolves with OpenStackConfig().get_one(), then asks Keystone for the image endpoint as
openstacksdk's session would use it (get_session_endpoint: the override as written, else the
catalog URL for the image service's interface and region; Glance itself is not contacted).
Prints {"error": "..."} when get_one raises.
"""
import json
import sys
import warnings


def main(argv):
    name = argv[1] if len(argv) > 1 and argv[1] else None
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter('always')
        try:
            from openstack import config as os_config
            region = os_config.OpenStackConfig().get_one(cloud=name)
        except Exception as e:  # ConfigException, keystoneauth option errors, ...
            print(json.dumps({'error': '%s: %s' % (type(e).__name__, e)}))
            return 0
        cfg = region.config
        auth = cfg.get('auth') or {}
        verify, _cert = region.get_requests_verify_args()
        # The generic password plugin fills missing user and project domains from
        # default_domain_* when it authenticates: shown as it will be sent.
        for kind in ('user', 'project'):
            for key in ('id', 'name'):
                if not auth.get('%s_domain_id' % kind) and not auth.get('%s_domain_name' % kind):
                    if auth.get('default_domain_%s' % key):
                        auth = dict(auth)
                        auth['%s_domain_%s' % (kind, key)] = auth['default_domain_%s' % key]
        out = {
            'auth_type': cfg.get('auth_type'),
            'auth_url': auth.get('auth_url'),
            'username': auth.get('username'),
            'user_id': auth.get('user_id'),
            'user_domain_id': auth.get('user_domain_id'),
            'user_domain_name': auth.get('user_domain_name'),
            'project_id': auth.get('project_id'),
            'project_name': auth.get('project_name'),
            'project_domain_id': auth.get('project_domain_id'),
            'project_domain_name': auth.get('project_domain_name'),
            'application_credential_id': auth.get('application_credential_id'),
            'application_credential_name': auth.get('application_credential_name'),
            'region_name': region.get_region_name('image') or None,
            'interface': region.get_interface('image'),
            'image_endpoint_override': region.get_endpoint('image'),
            'verify': verify,
        }
        try:
            out['image_endpoint'] = region.get_session_endpoint('image')
        except Exception as e:
            out['image_endpoint_error'] = '%s: %s' % (type(e).__name__, e)
        out['warnings'] = sorted({str(w.message) for w in caught
                                  if 'nflux' not in str(w.message)})
    print(json.dumps(out, sort_keys=True, default=str))
    return 0


if __name__ == '__main__':
    sys.exit(main(sys.argv))
