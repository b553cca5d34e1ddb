// Portcullis: security keys and passkeys (WebAuthn) on the portal's pages.
// The page carries the ceremony's options in data-options (base64url binary
// fields); this script asks the browser, puts the answer (Okta's field
// names, base64url) into the form's hidden "response" field and submits.
// Without WebAuthn the page says so and the other sign-in methods remain.
(function () {
  "use strict";
  var box = document.getElementById("webauthn");
  if (!box) { return; }
  var form = document.getElementById(box.getAttribute("data-form"));
  var status = document.getElementById("webauthn-status");
  var button = document.getElementById("webauthn-start");
  function say(text) { if (status) { status.textContent = text; } }
  if (!form || !window.PublicKeyCredential || !navigator.credentials) {
    say("This browser cannot use security keys or passkeys here. Use another sign-in method.");
    if (button) { button.disabled = true; }
    return;
  }
  function bin(s) {
    var b = atob(s.replace(/-/g, "+").replace(/_/g, "/") + "===".slice((s.length + 3) % 4));
    var out = new Uint8Array(b.length);
    for (var i = 0; i < b.length; i++) { out[i] = b.charCodeAt(i); }
    return out.buffer;
  }
  function b64(buf) {
    var bytes = new Uint8Array(buf), s = "";
    for (var i = 0; i < bytes.length; i++) { s += String.fromCharCode(bytes[i]); }
    return btoa(s).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
  }
  var options = JSON.parse(box.getAttribute("data-options"));
  var mode = box.getAttribute("data-mode");
  options.challenge = bin(options.challenge);
  if (options.user) { options.user.id = bin(options.user.id); }
  (options.excludeCredentials || []).forEach(function (c) { c.id = bin(c.id); });
  (options.allowCredentials || []).forEach(function (c) { c.id = bin(c.id); });
  function run(ev) {
    if (ev) { ev.preventDefault(); }
    if (form.reportValidity && !form.reportValidity()) { return; }
    say("Follow your browser's prompt...");
    var p = mode === "create"
      ? navigator.credentials.create({ publicKey: options })
      : navigator.credentials.get({ publicKey: options });
    p.then(function (cred) {
      var r = cred.response, out = { credentialId: b64(cred.rawId), clientData: b64(r.clientDataJSON) };
      if (mode === "create") {
        out.attestation = b64(r.attestationObject);
      } else {
        out.authenticatorData = b64(r.authenticatorData);
        out.signatureData = b64(r.signature);
        if (r.userHandle && r.userHandle.byteLength) { out.userHandle = b64(r.userHandle); }
      }
      form.elements.response.value = JSON.stringify(out);
      say("Checking...");
      form.submit();
    }).catch(function (e) {
      say("That did not work (" + (e && e.name ? e.name : "error") + "). Try again, or use another method.");
    });
  }
  if (button) { button.addEventListener("click", run); }
  form.addEventListener("submit", function (ev) { if (!form.elements.response.value) { run(ev); } });
  say("");
})();
