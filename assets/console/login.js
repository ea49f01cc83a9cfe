'use strict';
// Reveals the "Wrong token." message after a failed login (/console?failed=1).
document.addEventListener('DOMContentLoaded', () => {
  if (new URLSearchParams(location.search).get('failed') === '1') {
    document.getElementById('login-failed').hidden = false;
  }
});
