;;; A p2pstore node as a Guix System service.
;;;
;;; In an operating-system declaration, with this directory on the load
;;; path (guix system -L dist/guix reconfigure config.scm):
;;;
;;;   (use-modules (p2pstore))
;;;   (services
;;;    (cons (service p2pstore-service-type
;;;                   (p2pstore-configuration
;;;                    (package p2pstore)   ;a build of cmd/p2pstore
;;;                    (bootstrap '("/ip4/203.0.113.7/tcp/7421/p2p/12D3KooW..."))))
;;;          %base-services))
;;;
;;; The node runs as the system user p2pstore under Shepherd; its settings
;;; are written to /etc/p2pstore/config.yaml, the default config path that
;;; the commands (p2pstore status, ...) read too, so members of the group
;;; p2pstore may use them. Unlike the systemd unit there is no sandbox
;;; beyond the user, and no firewall is opened: peers need the TCP and UDP
;;; ports of p2p-listen (7421), and mDNS UDP 5353 on a LAN.
;;;
;;; Guix clients are not served yet: the node speaks Nix's narinfos and
;;; signatures today, and Guix signs and reads its own. The node does not
;;; read Guix's store database, so nothing of the local store is shared
;;; (share-local? is off).

(define-module (p2pstore)
  #:use-module (gnu packages admin)
  #:use-module (gnu services)
  #:use-module (gnu services shepherd)
  #:use-module (gnu system shadow)
  #:use-module (guix gexp)
  #:use-module (guix records)
  #:use-module (ice-9 match)
  #:use-module (srfi srfi-1)
  #:export (p2pstore-configuration
            p2pstore-configuration?
            p2pstore-configuration-package
            p2pstore-configuration-store-directory
            p2pstore-configuration-guix-http-listen
            p2pstore-configuration-data-directory
            p2pstore-configuration-socket
            p2pstore-configuration-socket-group
            p2pstore-configuration-guix-daemon-socket
            p2pstore-configuration-http-listen
            p2pstore-configuration-p2p-listen
            p2pstore-configuration-bootstrap
            p2pstore-configuration-mdns?
            p2pstore-configuration-trusted-public-keys
            p2pstore-configuration-upstreams
            p2pstore-configuration-upstream-public-keys
            p2pstore-configuration-max-bytes
            p2pstore-configuration-share-local?
            p2pstore-configuration-sign-key-file
            p2pstore-configuration-log-file
            p2pstore-configuration-extra-settings
            p2pstore-configuration-settings
            p2pstore-configuration->yaml
            p2pstore-service-type))

(define-record-type* <p2pstore-configuration>
  p2pstore-configuration make-p2pstore-configuration
  p2pstore-configuration?
  (package              p2pstore-configuration-package) ;file-like, with bin/p2pstore
  (store-directory      p2pstore-configuration-store-directory ;Guix's
                        (default "/gnu/store"))
  (guix-http-listen     p2pstore-configuration-guix-http-listen ;for guix substitute
                        (default "127.0.0.1:8080"))
  (data-directory       p2pstore-configuration-data-directory
                        (default "/var/lib/p2pstore"))
  (socket               p2pstore-configuration-socket
                        (default "/var/run/p2pstore/daemon.sock"))
  (socket-group         p2pstore-configuration-socket-group ;#f: root and the node only
                        (default "p2pstore"))
  (guix-daemon-socket   p2pstore-configuration-guix-daemon-socket ;for GUIX_DAEMON_SOCKET
                        (default "/var/run/p2pstore/guix-daemon.sock"))
  (http-listen          p2pstore-configuration-http-listen
                        (default "127.0.0.1:7420"))
  (p2p-listen           p2pstore-configuration-p2p-listen
                        (default '("/ip4/0.0.0.0/tcp/7421"
                                   "/ip4/0.0.0.0/udp/7421/quic-v1")))
  (bootstrap            p2pstore-configuration-bootstrap ;multiaddresses with /p2p/ID
                        (default '()))
  (mdns?                p2pstore-configuration-mdns?
                        (default #t))
  (trusted-public-keys  p2pstore-configuration-trusted-public-keys
                        (default '()))
  (upstreams            p2pstore-configuration-upstreams
                        (default '()))
  (upstream-public-keys p2pstore-configuration-upstream-public-keys
                        (default '()))
  (max-bytes            p2pstore-configuration-max-bytes ;"50G"; "0": no limit
                        (default "0"))
  (share-local?         p2pstore-configuration-share-local?
                        (default #f))
  (sign-key-file        p2pstore-configuration-sign-key-file ;Nix secret key, or #f
                        (default #f))
  (log-file             p2pstore-configuration-log-file
                        (default "/var/log/p2pstore.log"))
  (extra-settings       p2pstore-configuration-extra-settings ;alist: (("log.level" . "debug"))
                        (default '())))

;; YAML scalars: strings double-quoted (write's escapes are YAML's),
;; booleans and numbers bare, lists in flow style.
(define (yaml-value value)
  (match value
    (#t "true")
    (#f "false")
    ((? number?) (number->string value))
    ((? string?) (object->string value))
    ((items ...) (string-append "[" (string-join (map yaml-value items) ", ") "]"))))

;; The settings as (KEY . VALUE), KEY as the node names it ("http.listen").
(define (p2pstore-configuration-settings config)
  `(("daemon.socket" . ,(p2pstore-configuration-socket config))
    ,@(match (p2pstore-configuration-socket-group config)
        (#f '())
        (group `(("daemon.socket_group" . ,group))))
    ("http.listen" . ,(p2pstore-configuration-http-listen config))
    ("guix.store_dir" . ,(p2pstore-configuration-store-directory config))
    ("guix.http_listen" . ,(p2pstore-configuration-guix-http-listen config))
    ("guix.daemon_socket" . ,(p2pstore-configuration-guix-daemon-socket config))
    ("p2p.listen" . ,(p2pstore-configuration-p2p-listen config))
    ("p2p.bootstrap" . ,(p2pstore-configuration-bootstrap config))
    ("p2p.mdns" . ,(p2pstore-configuration-mdns? config))
    ("trust.public_keys" . ,(p2pstore-configuration-trusted-public-keys config))
    ("upstream.substituters" . ,(p2pstore-configuration-upstreams config))
    ("upstream.public_keys" . ,(p2pstore-configuration-upstream-public-keys config))
    ("storage.max_bytes" . ,(p2pstore-configuration-max-bytes config))
    ("local.share" . ,(p2pstore-configuration-share-local? config))
    ,@(p2pstore-configuration-extra-settings config)))

(define (p2pstore-configuration->yaml config)
  "Return the text of CONFIG's config file: top-level keys, then one block
per section (\"http.listen\" goes under \"http:\"), in the order they come."
  (define settings (p2pstore-configuration-settings config))
  (define (section key)
    (match (string-index key #\.)
      (#f #f)
      (dot (substring key 0 dot))))
  (define (leaf key)
    (substring key (+ 1 (string-index key #\.))))
  (define sections
    (delete-duplicates (filter-map (compose section car) settings)))
  (string-append
   (string-concatenate
    (filter-map (match-lambda
                  ((key . value)
                   (and (not (section key))
                        (string-append key ": " (yaml-value value) "\n"))))
                settings))
   (string-concatenate
    (map (lambda (name)
           (string-append
            name ":\n"
            (string-concatenate
             (filter-map (match-lambda
                           ((key . value)
                            (and (equal? (section key) name)
                                 (string-append "  " (leaf key) ": "
                                                (yaml-value value) "\n"))))
                         settings))))
         sections))))

(define (p2pstore-config-file config)
  (plain-file "p2pstore.yaml" (p2pstore-configuration->yaml config)))

(define %p2pstore-accounts
  (list (user-group
         (name "p2pstore")
         (system? #t))
        (user-account
         (name "p2pstore")
         (group "p2pstore")
         (system? #t)
         (comment "p2pstore node")
         (home-directory "/var/lib/p2pstore")
         (shell (file-append shadow "/sbin/nologin")))))

;; The data directory is the node's alone (it keeps private paths); the
;; socket's directory is open to the socket's group.
(define (p2pstore-activation config)
  (let ((data (p2pstore-configuration-data-directory config))
        (run (dirname (p2pstore-configuration-socket config))))
    #~(begin
        (use-modules (guix build utils))
        (let ((user (getpwnam "p2pstore")))
          (for-each (match-lambda
                      ((dir . mode)
                       (mkdir-p dir)
                       (chown dir (passwd:uid user) (passwd:gid user))
                       (chmod dir mode)))
                    (list (cons #$data #o700) (cons #$run #o750)))))))

(define (p2pstore-shepherd-service config)
  (let ((package (p2pstore-configuration-package config))
        (key (p2pstore-configuration-sign-key-file config)))
    (list (shepherd-service
           (provision '(p2pstore))
           (requirement '(networking))
           (documentation "Run the p2pstore peer-to-peer substitution node.")
           (start #~(make-forkexec-constructor
                     (list #$(file-append package "/bin/p2pstore") "serve"
                           "--config" #$(p2pstore-config-file config)
                           "--data-dir" #$(p2pstore-configuration-data-directory config)
                           #$@(if key (list "--sign-key-file" key) '()))
                     #:user "p2pstore"
                     #:group "p2pstore"
                     #:log-file #$(p2pstore-configuration-log-file config)))
           (stop #~(make-kill-destructor))))))

(define p2pstore-service-type
  (service-type
   (name 'p2pstore)
   (extensions
    (list (service-extension shepherd-root-service-type
                             p2pstore-shepherd-service)
          (service-extension account-service-type
                             (const %p2pstore-accounts))
          (service-extension activation-service-type
                             p2pstore-activation)
          (service-extension etc-service-type
                             (lambda (config)
                               `(("p2pstore/config.yaml"
                                  ,(p2pstore-config-file config)))))
          (service-extension profile-service-type
                             (compose list p2pstore-configuration-package))))
   (description
    "Run p2pstore, a peer-to-peer substitution node that shares store paths
with its peers and serves them as a binary cache.")))
