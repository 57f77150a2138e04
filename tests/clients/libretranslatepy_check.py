"""LibreTranslate's Python client (libretranslatepy, from PyPI) against
`precis serve`: run by tests/libretranslate_clients.rs as

    python libretranslatepy_check.py BASE_URL API_KEY

Exits non-zero, saying why, when an answer is not what the client expects.
"""

import json
import sys
import urllib.error
import urllib.request

from libretranslatepy import LibreTranslateAPI

base, key = sys.argv[1], sys.argv[2]


def cyrillic(text):
    return any("\u0400" <= c <= "\u04ff" for c in text)


lt = LibreTranslateAPI(base, api_key=key)

languages = lt.languages()
codes = {l["code"]: l for l in languages}
assert {"en", "ru", "hi"} <= set(codes), languages
assert {"ru", "hi"} <= set(codes["en"]["targets"]), languages
assert all(isinstance(l["name"], str) and l["name"] for l in languages), languages

text = lt.translate("The foreign ministers met in Johannesburg on Thursday.", "en", "ru")
assert isinstance(text, str) and cyrillic(text) and "ministers" not in text, text

detected = lt.detect("Министры иностранных дел встретились в четверг в Йоханнесбурге.")
assert detected[0]["language"] == "ru", detected
assert 0 < detected[0]["confidence"] <= 100, detected

# The client takes one string; a list goes as LibreTranslate's JSON body,
# the way the client's own requests are made.
request = urllib.request.Request(
    base.rstrip("/") + "/translate",
    data=json.dumps(
        {"q": ["The talks ended.", "They will meet again."], "source": "en", "target": "ru", "api_key": key}
    ).encode(),
    headers={"Content-Type": "application/json"},
)
answer = json.loads(urllib.request.urlopen(request).read())
assert len(answer["translatedText"]) == 2 and all(map(cyrillic, answer["translatedText"])), answer

for wrong, status in ((LibreTranslateAPI(base, api_key="not-a-key"), 403), (LibreTranslateAPI(base), 400)):
    try:
        wrong.translate("Hello.", "en", "ru")
    except urllib.error.HTTPError as e:
        assert e.code == status, (e.code, status)
        body = json.loads(e.read())
        assert isinstance(body["error"], str) and body["error"], body
    else:
        raise AssertionError("a request with a wrong or no key was answered")

print("libretranslatepy: languages, translate, detect, a list, a wrong key (403) and none (400): ok")
