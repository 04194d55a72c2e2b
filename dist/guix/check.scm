;;; Checks p2pstore.scm with plain Guile, without Guix: every form reads
;;; (the gexp syntax #~ #$ #$@ read as plain lists), every name the module
;;; exports is defined, and the config file writer, run with record
;;; accessors that look fields up in an alist, prints the config file of
;;; the configuration given as the second argument (dist_test.go hands it
;;; to the real node).
;;;
;;;   guile --no-auto-compile dist/guix/check.scm dist/guix/p2pstore.scm \
;;;     '((http-listen . "127.0.0.1:7420"))'

(use-modules (ice-9 match) (srfi srfi-1))

(read-hash-extend #\~ (lambda (chr port) (list 'gexp (read port))))
(read-hash-extend #\$ (lambda (chr port)
                        (if (eqv? (peek-char port) #\@)
                            (begin (read-char port)
                                   (list 'ungexp-splicing (read port)))
                            (list 'ungexp (read port)))))

(define (fail . message)
  (apply format (current-error-port) message)
  (newline (current-error-port))
  (exit 1))

(match (command-line)
  ((_ file sample)
   (define forms
     (call-with-input-file file
       (lambda (port)
         (let loop ((acc '()))
           (let ((form (read port)))
             (if (eof-object? form)
                 (reverse acc)
                 (loop (cons form acc))))))))

   (define exports
     (match (assq 'define-module forms)
       (('define-module name options ...)
        (match (member #:export options)
          ((_ names . _) names)
          (_ (fail "~a: define-module exports nothing" file))))
       (_ (fail "~a: no define-module" file))))

   (define record
     (or (assq 'define-record-type* forms)
         (fail "~a: no define-record-type*" file)))

   ;; (field accessor (default value) ...) of the record.
   (define fields (drop record 5))

   (define defined
     (append (take (cdr record) 4)
             (map cadr fields)
             (filter-map (match-lambda
                           (('define (name . _) . _) name)
                           (('define (? symbol? name) . _) name)
                           (_ #f))
                         forms)))

   (for-each (lambda (name)
               (unless (memq name defined)
                 (fail "~a: exports ~a, which it does not define" file name)))
             exports)

   ;; The record's accessors over an alist configuration.
   (for-each (match-lambda
               ((field accessor . options)
                (let ((default (match (assq 'default options)
                                 (('default expr) (eval expr (current-module)))
                                 (#f #f))))
                  (module-define! (current-module) accessor
                                  (lambda (config)
                                    (match (assq field config)
                                      ((_ . value) value)
                                      (#f default)))))))
             fields)

   (define (definition name)
     (or (find (match-lambda
                 (('define (n . _) . _) (eq? n name))
                 (_ #f))
               forms)
         (fail "~a: no definition of ~a" file name)))

   (for-each (lambda (name) (eval (definition name) (current-module)))
             '(yaml-value
               p2pstore-configuration-settings
               p2pstore-configuration->yaml))

   (display ((module-ref (current-module) 'p2pstore-configuration->yaml)
             (call-with-input-string sample read))))
  (_ (fail "usage: guile check.scm p2pstore.scm SAMPLE-ALIST")))
