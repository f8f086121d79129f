import java.io.*;
import java.net.*;
import java.nio.charset.StandardCharsets;
import java.security.KeyStore;
import javax.net.ssl.*;

/**
 * Test TLS server: loads a keystore and a truststore the way a Kafka broker does and
 * requires client certificates. Prints its port, then answers "OK <peer DN>" to each line.
 * Usage: MtlsServer keystore keystoreType truststore truststoreType passwordFile
 */
public class MtlsServer {
    public static void main(String[] args) throws Exception {
        char[] password = new String(java.nio.file.Files.readAllBytes(
            java.nio.file.Paths.get(args[4])), StandardCharsets.UTF_8).trim().toCharArray();
        KeyStore ks = KeyStore.getInstance(args[1]);
        try (InputStream in = new FileInputStream(args[0])) { ks.load(in, password); }
        KeyStore ts = KeyStore.getInstance(args[3]);
        try (InputStream in = new FileInputStream(args[2])) { ts.load(in, password); }
        KeyManagerFactory kmf = KeyManagerFactory.getInstance(KeyManagerFactory.getDefaultAlgorithm());
        kmf.init(ks, password);
        TrustManagerFactory tmf = TrustManagerFactory.getInstance(TrustManagerFactory.getDefaultAlgorithm());
        tmf.init(ts);
        SSLContext ctx = SSLContext.getInstance("TLS");
        ctx.init(kmf.getKeyManagers(), tmf.getTrustManagers(), null);
        SSLServerSocket server = (SSLServerSocket) ctx.getServerSocketFactory()
            .createServerSocket(0, 50, InetAddress.getByName("127.0.0.1"));
        server.setNeedClientAuth(true);
        System.out.println(server.getLocalPort());
        System.out.flush();
        while (true) {
            SSLSocket socket = (SSLSocket) server.accept();
            new Thread(() -> serve(socket)).start();
        }
    }

    static void serve(SSLSocket socket) {
        try (socket) {
            socket.startHandshake();
            BufferedReader reader = new BufferedReader(
                new InputStreamReader(socket.getInputStream(), StandardCharsets.UTF_8));
            String line = reader.readLine();
            String peer = socket.getSession().getPeerPrincipal().getName();
            Writer out = new OutputStreamWriter(socket.getOutputStream(), StandardCharsets.UTF_8);
            out.write("OK " + peer + " " + line + "\n");
            out.flush();
        } catch (Exception e) {
            System.err.println("refused: " + e);
        }
    }
}
