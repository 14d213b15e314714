from starlette.datastructures import Headers

from ingress.auth import key_matches, presented_key


def test_bearer_and_x_api_key_are_accepted():
    assert presented_key(Headers({"authorization": "Bearer k1"})) == "k1"
    assert presented_key(Headers({"authorization": "bearer  k2 "})) == "k2"
    assert presented_key(Headers({"x-api-key": "k3"})) == "k3"
    assert presented_key(Headers({"authorization": "Basic abc"})) is None
    assert presented_key(Headers({})) is None


def test_key_matching():
    keys = ("alpha", "beta")
    assert key_matches("beta", keys)
    assert not key_matches("gamma", keys)
    assert not key_matches("alph", keys)
    assert not key_matches(None, keys)
    assert not key_matches("", keys)
    assert not key_matches("alpha", ())
